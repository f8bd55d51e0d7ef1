"""What reranking would have changed, for shadow mode: pure figures of the engine's order and the model's scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ShadowFigures:
    overlap_at_10: float  # share of the engine's top 10 still in the reranked top 10
    top_hit_rank: int  # where the engine's first hit lands after reranking (1: it stays first)
    kendall_tau: float  # between the engine's order and the reranked order of the scored window


def shadow_figures(scores: Sequence[float]) -> ShadowFigures:
    """``scores`` are the model's, for the window in the engine's order (ties keep the engine's order)."""
    n = len(scores)
    reranked = sorted(range(n), key=lambda i: (-scores[i], i))
    top = min(10, n)
    overlap = len(set(reranked[:top]) & set(range(top))) / top if top else 1.0
    rank = reranked.index(0) + 1 if n else 1
    pairs = n * (n - 1) // 2
    position = [0] * n
    for at, i in enumerate(reranked):
        position[i] = at
    tau = 1.0 - 2.0 * _inversions(position) / pairs if pairs else 1.0
    return ShadowFigures(overlap, rank, tau)


def _inversions(values: list[int]) -> int:
    """Pairs i < j with values[i] > values[j], by merge sort: O(n log n) for the widest window."""
    if len(values) < 2:
        return 0
    mid = len(values) // 2
    left, right = sorted(values[:mid]), sorted(values[mid:])
    count = _inversions(values[:mid]) + _inversions(values[mid:])
    j = 0
    for v in left:  # each element of the left half is inverted with the right-half elements smaller than it
        while j < len(right) and right[j] < v:
            j += 1
        count += j
    return count
