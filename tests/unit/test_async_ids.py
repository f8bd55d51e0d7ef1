"""Async search ids that carry the plan: they read back as written, and only the key that made them verifies them."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config import ScoringOptions
from sidecar.search import async_ids
from sidecar.search.plan import Plan, Step

_plans = st.builds(
    Plan,
    query=st.text(min_size=1, max_size=200),
    fields=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=3).map(tuple),
    window=st.integers(1, 1000),
    start=st.integers(0, 100),
    size=st.integers(1, 100),
    model=st.sampled_from(["default", "mini"]),
    scoring=st.builds(ScoringOptions, query_weight=st.floats(-10, 10), min_score=st.none() | st.floats(-5, 5)),
    hidden_fields=st.lists(st.text(min_size=1, max_size=10), max_size=2).map(tuple),
    hide_source=st.booleans(),
    budget_s=st.none() | st.floats(0, 5),
    steps=st.lists(st.builds(Step, model=st.just("mini"), window=st.integers(1, 50)), max_size=2).map(tuple),
)


@given(engine_id=st.text(min_size=1, max_size=80), plan=_plans)
def test_an_id_reads_back_as_written_and_is_url_safe(engine_id: str, plan: Plan) -> None:
    our_id = async_ids.wrap(engine_id, plan, b"k")
    assert async_ids.is_ours(our_id) and all(c.isalnum() or c in "._-" for c in our_id)
    back = async_ids.unwrap(our_id, b"k")
    assert (back.engine_id, back.plan, back.verified) == (engine_id, plan, True)
    assert async_ids.unwrap(our_id, b"another key").verified is False


@given(plan=_plans, at=st.integers(0, 1000), char=st.sampled_from("AbZ09-_"))
def test_any_change_to_an_id_fails_its_check_or_its_reading(plan: Plan, at: int, char: str) -> None:
    our_id = async_ids.wrap("engine-id", plan, b"k")
    i = len("rsc1.") + at % (len(our_id) - len("rsc1."))
    changed = our_id[:i] + char + our_id[i + 1 :]
    if changed == our_id:
        return
    with contextlib.suppress(async_ids.InvalidId):  # unreadable, or read and not verified
        assert async_ids.unwrap(changed, b"k").verified is False


@pytest.mark.parametrize("junk", ["rsc1.", "rsc1.x.y", "rsc1.a.b.c", "rsc1.!!!.x", "rsc1." + "A" * 40 + ".x"])
def test_junk_is_invalid(junk: str) -> None:
    with pytest.raises(async_ids.InvalidId):
        async_ids.unwrap(junk, b"k")


def test_engine_ids_are_not_ours() -> None:
    assert not async_ids.is_ours("FmRldE8zREVEUzA2ZVpUeGs2ejJFUFEaMkZ5QTVrSTZSaVN3WlNFVmtlWHJsdzoxMDc=")
