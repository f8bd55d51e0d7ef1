"""Shadow mode's figures against their definitions, computed the slow way."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.rerank.shadow import shadow_figures


def _tau(scores: list[float]) -> float:
    """Kendall's tau between the engine's order (0..n-1) and the reranked one (ties keep the engine's order)."""
    n = len(scores)
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    position = {h: p for p, h in enumerate(order)}
    pairs = list(itertools.combinations(range(n), 2))
    discordant = sum(1 for i, j in pairs if position[i] > position[j])
    return 1 - 2 * discordant / len(pairs) if pairs else 1.0


@given(st.lists(st.integers(-5, 5).map(float), max_size=40))
def test_figures_match_their_definitions(scores: list[float]) -> None:
    got = shadow_figures(scores)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    top = min(10, len(scores))
    assert got.overlap_at_10 == (len(set(order[:top]) & set(range(top))) / top if top else 1.0)
    assert got.top_hit_rank == (order.index(0) + 1 if scores else 1)
    assert got.kendall_tau == pytest.approx(_tau(scores))


@pytest.mark.parametrize(
    ("scores", "overlap", "rank", "tau"),
    [
        ([3.0, 2.0, 1.0], 1.0, 1, 1.0),  # the model agrees with the engine
        ([1.0, 2.0, 3.0], 1.0, 3, -1.0),  # it reverses the window
        ([0.0] * 12 + [1.0] * 8, 0.2, 9, pytest.approx(1 - 2 * 96 / 190)),
    ],
)
def test_known_windows(scores: list[float], overlap: float, rank: int, tau: float) -> None:
    got = shadow_figures(scores)
    assert (got.overlap_at_10, got.top_hit_rank, got.kendall_tau) == (overlap, rank, tau)
