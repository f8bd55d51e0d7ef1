"""Scores, and splicing reranked hits back into the engine's reply (Plan objects built directly)."""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config import ScoringOptions
from sidecar.search.hits import engine_page, final_score, final_scores, hit_texts, normalized, splice
from sidecar.search.plan import Plan


def _plan(**kw: Any) -> Plan:
    args: dict[str, Any] = {
        "query": "q",
        "fields": ("text",),
        "window": 10,
        "start": 0,
        "size": 10,
        "model": "default",
        "scoring": ScoringOptions(),
    }
    return Plan(**{**args, **kw})


def _reply(engine_scores: list[float | None]) -> dict[str, Any]:
    hits = [
        {"_index": "docs", "_id": str(i), "_score": s, "_source": {"text": f"doc {i}", "title": f"t{i}"}}
        for i, s in enumerate(engine_scores)
    ]
    top = max((s for s in engine_scores if s is not None), default=None)
    return {"took": 1, "hits": {"total": {"value": len(hits), "relation": "eq"}, "max_score": top, "hits": hits}}


def _ids(reply: dict[str, Any]) -> list[str]:
    return [h["_id"] for h in reply["hits"]["hits"]]


# --- final_score --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "engine", "model", "expected"),
    [
        ({}, 7.0, 0.25, 0.25),
        ({}, None, -3.0, -3.0),
        ({"score_mode": "normalize"}, 7.0, 2.0, 3.0),  # max(s, 0) + min(exp(s), 1)
        ({"score_mode": "normalize"}, 7.0, 0.0, 1.0),
        ({"score_mode": "normalize"}, None, -1.0, math.exp(-1.0)),
        ({"score_mode": "combine"}, 1.5, 2.0, 3.5),  # total, weights 1
        ({"score_mode": "combine", "query_weight": 2, "rerank_weight": 3}, 1.0, 2.0, 8.0),
        ({"score_mode": "combine", "combine_mode": "multiply", "query_weight": 2, "rerank_weight": 3}, 1.0, 2.0, 12.0),
        ({"score_mode": "combine", "combine_mode": "avg", "query_weight": 2, "rerank_weight": 3}, 1.0, 2.0, 4.0),
        ({"score_mode": "combine", "combine_mode": "max", "query_weight": 2, "rerank_weight": 3}, 1.0, 2.0, 6.0),
        ({"score_mode": "combine", "combine_mode": "min", "query_weight": 2, "rerank_weight": 3}, 1.0, 2.0, 2.0),
        ({"score_mode": "combine"}, None, 2.0, 2.0),  # no engine score (sorted or scoreless hits): 0
        ({"score_mode": "combine", "combine_mode": "multiply"}, None, 2.0, 0.0),
        ({"score_mode": "combine", "query_weight": 0}, 100.0, 2.0, 2.0),
    ],
)
def test_final_score(options: dict[str, Any], engine: float | None, model: float, expected: float) -> None:
    assert final_score(engine, model, ScoringOptions(**options)) == pytest.approx(expected)


_FINITE = st.floats(min_value=-700, max_value=700, allow_nan=False)


@given(_FINITE, _FINITE)
def test_property_normalize_is_positive_and_keeps_the_model_order(a: float, b: float) -> None:
    opts = ScoringOptions(score_mode="normalize")
    fa, fb = final_score(None, a, opts), final_score(None, b, opts)
    assert fa >= 0 and fb >= 0
    if a <= b:
        assert fa <= fb


def test_normalize_takes_any_finite_model_score() -> None:
    assert final_score(None, 710.0, ScoringOptions(score_mode="normalize")) == 711.0


# --- splice -------------------------------------------------------------------------------------------------------


def test_the_window_is_reordered_by_the_model() -> None:
    out = splice(_reply([3.0, 2.0, 1.0]), _plan(window=3), [0.1, 0.9, 0.5], "m")
    assert _ids(out) == ["1", "2", "0"]
    assert [h["_score"] for h in out["hits"]["hits"]] == [0.9, 0.5, 0.1]
    assert out["hits"]["max_score"] == 0.9
    assert out["hits"]["total"] == {"value": 3, "relation": "eq"} and out["took"] == 1  # the rest is the engine's


def test_ties_keep_the_engine_order() -> None:
    out = splice(_reply([5.0, 4.0, 3.0, 2.0, 1.0]), _plan(window=5), [1.0, 2.0, 1.0, 2.0, 1.0], "m")
    assert _ids(out) == ["1", "3", "0", "2", "4"]


@pytest.mark.parametrize(("start", "size", "expected"), [(0, 2, ["4", "3"]), (1, 2, ["3", "2"]), (3, 10, ["1", "0"])])
def test_from_and_size_cut_the_reranked_window(start: int, size: int, expected: list[str]) -> None:
    out = splice(_reply([5.0, 4.0, 3.0, 2.0, 1.0]), _plan(window=5, start=start, size=size), [0, 1, 2, 3, 4], "m")
    assert _ids(out) == expected
    assert out["hits"]["max_score"] == 4  # the best of the window, as the engine reports it for any page


def test_min_score_drops_hits_before_the_page_is_cut() -> None:
    plan = _plan(window=5, start=1, size=2, scoring=ScoringOptions(min_score=0.5))
    out = splice(_reply([5.0, 4.0, 3.0, 2.0, 1.0]), plan, [0.1, 0.9, 0.6, 0.5, 0.2], "m")
    assert _ids(out) == ["2", "3"]  # kept: 1 (0.9), 2 (0.6), 3 (0.5, equal counts); page [1, 3)


def test_min_score_applies_to_the_final_score() -> None:
    plan = _plan(window=2, scoring=ScoringOptions(score_mode="combine", min_score=3.0))
    out = splice(_reply([2.5, 0.5]), plan, [1.0, 2.0], "m")
    assert _ids(out) == ["0"] and out["hits"]["hits"][0]["_score"] == 3.5


def test_min_score_above_every_hit_leaves_an_empty_page() -> None:
    out = splice(_reply([2.0, 1.0]), _plan(window=2, scoring=ScoringOptions(min_score=10)), [1.0, 2.0], "m")
    assert out["hits"]["hits"] == [] and out["hits"]["max_score"] is None


def test_fields_fetched_only_for_the_model_are_hidden_and_the_engine_hits_are_not_changed() -> None:
    reply = _reply([2.0, 1.0])
    reply["hits"]["hits"][0]["_source"] = {"text": "a", "meta": {"secret": 1, "kept": 2}, "x.y": 3, "only": {"z": 4}}
    original = copy.deepcopy(reply["hits"]["hits"])
    window = list(reply["hits"]["hits"])
    plan = _plan(window=2, hidden_fields=("text", "meta.secret", "x.y", "only.z"))
    out = splice(reply, plan, [1.0, 0.0], "m")
    assert out["hits"]["hits"][0]["_source"] == {"meta": {"kept": 2}}  # an object left empty goes too
    assert out["hits"]["hits"][1]["_source"] == {"title": "t1"}
    assert window == original  # the hits we were given are copied, never edited


def test_hide_source_drops_the_whole_source() -> None:
    out = splice(_reply([2.0, 1.0]), _plan(window=2, hide_source=True, hidden_fields=("text",)), [0.0, 1.0], "m")
    assert all("_source" not in h for h in out["hits"]["hits"])


def test_explain_wraps_the_engines_explanation() -> None:
    reply = _reply([2.0, 1.0])
    reply["hits"]["hits"][1]["_explanation"] = {"value": 1.0, "description": "weight(text:a)", "details": []}
    out = splice(reply, _plan(window=2, explain=True), [0.0, 1.0], "tiny")
    first = out["hits"]["hits"][0]
    assert first["_id"] == "1" and first["_explanation"]["value"] == 1.0
    description = first["_explanation"]["description"]
    assert "[tiny]" in description and "engine rank [2]" in description
    assert first["_explanation"]["details"] == [{"value": 1.0, "description": "weight(text:a)", "details": []}]
    assert out["hits"]["hits"][1]["_explanation"]["details"] == []


def test_a_reply_without_hits_is_returned_as_it_is() -> None:
    for reply in ({"error": {"type": "x"}}, {"hits": None}):
        assert splice(copy.deepcopy(reply), _plan(), [], "m") == reply
    out = splice({"hits": {"hits": []}}, _plan(), [], "m")
    assert out["hits"] == {"hits": [], "max_score": None}


def test_scores_for_a_head_of_the_window_put_the_rest_below_it_in_engine_order() -> None:
    """A latency budget ran out after two hits: the other three follow, unscored, in the engine's order."""
    out = splice(_reply([5.0, 4.0, 3.0, 2.0, 1.0]), _plan(window=5), [0.1, 0.9], "m")
    assert _ids(out) == ["1", "0", "2", "3", "4"]
    scores = [h["_score"] for h in out["hits"]["hits"]]
    assert scores[:2] == [0.9, 0.1] and all(a > b for a, b in itertools.pairwise(scores[1:]))


@given(
    st.lists(st.integers(-3, 3), min_size=0, max_size=12),
    st.integers(0, 12),
    st.integers(0, 12),
    st.integers(1, 12),
)
def test_property_the_page_is_the_head_by_score_then_engine_rank_then_the_tail(
    model: list[int], head: int, start: int, size: int
) -> None:
    scores = [float(s) for s in model[:head]]
    plan = _plan(window=len(model), start=start, size=size)
    out = splice(_reply([float(len(model) - i) for i in range(len(model))]), plan, scores, "m")
    hits = out["hits"]["hits"]
    scored = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    expected = [*scored, *range(len(scores), len(model))][start : start + size]
    assert [int(h["_id"]) for h in hits] == expected
    assert all(a["_score"] >= b["_score"] for a, b in itertools.pairwise(hits))  # never rises
    assert all(h["_score"] == scores[int(h["_id"])] for h in hits if int(h["_id"]) < len(scores))


@given(st.lists(st.integers(-3, 3), min_size=0, max_size=12), st.integers(0, 12), st.integers(-3, 3))
def test_property_min_score_keeps_exactly_the_hits_at_or_above_it(model: list[int], start: int, min_score: int) -> None:
    plan = _plan(window=len(model), start=start, size=10, scoring=ScoringOptions(min_score=min_score))
    out = splice(_reply([1.0] * len(model)), plan, [float(s) for s in model], "m")
    kept = sorted((i for i, s in enumerate(model) if s >= min_score), key=lambda i: (-model[i], i))
    assert _ids(out) == [str(i) for i in kept[start : start + 10]]


# --- engine_page --------------------------------------------------------------------------------------------------


def test_engine_page_keeps_the_engine_order_and_scores_for_the_page() -> None:
    reply = _reply([5.0, 4.0, 3.0, 2.0, 1.0])
    original = copy.deepcopy(reply["hits"]["hits"])
    window = list(reply["hits"]["hits"])
    out = engine_page(reply, _plan(window=5, start=1, size=3, hidden_fields=("title",)))
    assert _ids(out) == ["1", "2", "3"]
    assert [h["_score"] for h in out["hits"]["hits"]] == [4.0, 3.0, 2.0]
    assert all(h["_source"] == {"text": f"doc {h['_id']}"} for h in out["hits"]["hits"])
    assert out["hits"]["max_score"] == 5.0
    assert window == original


def test_engine_page_past_the_hits_is_empty_and_hide_source_applies() -> None:
    assert engine_page(_reply([1.0]), _plan(start=5, size=2))["hits"]["hits"] == []
    out = engine_page(_reply([2.0, 1.0]), _plan(hide_source=True))
    assert [set(h) for h in out["hits"]["hits"]] == [{"_index", "_id", "_score"}] * 2
    assert engine_page({"took": 1}, _plan()) == {"took": 1}


# --- hit_texts ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hit", "plan_args", "expected"),
    [
        ({"_source": {"text": "body"}}, {}, ["body"]),
        ({"_source": {"title": "T", "text": "body"}}, {"fields": ("title", "text")}, ["T\nbody"]),
        ({"_source": {"title": "", "text": "body"}}, {"fields": ("title", "text"), "separator": " | "}, ["body"]),
        ({"_source": {"meta": {"t": "deep"}}}, {"fields": ("meta.t",)}, ["deep"]),
        ({"_source": {"text": "src"}, "fields": {"text": ["from fields"]}}, {}, ["from fields"]),
        ({"_source": {"text": ["a", "b"]}}, {}, ["a\nb"]),
        ({"_source": {"text": ["a", "b"]}}, {"array_mode": "max"}, ["a", "b"]),
        ({"_source": {"text": ["a"]}}, {"array_mode": "max"}, ["a"]),
        ({"_source": {"n": 3, "obj": {"x": 1}}}, {"fields": ("n", "obj")}, ["3"]),
        ({"_source": {}}, {}, [""]),
        ({}, {}, [""]),
    ],
)
def test_hit_texts(hit: dict[str, Any], plan_args: dict[str, Any], expected: list[str]) -> None:
    assert hit_texts(hit, _plan(**plan_args)) == expected


# --- fusion -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "values", "expected"),
    [
        ("none", [3.0, 1.0], [3.0, 1.0]),
        ("min_max", [3.0, 1.0, 2.0], [1.0, 0.0, 0.5]),
        ("min_max", [2.0, 2.0], [1.0, 1.0]),
        ("z_score", [1.0, 3.0], [-1.0, 1.0]),
        ("z_score", [5.0, 5.0], [0.0, 0.0]),
        ("min_max", [], []),
    ],
)
def test_normalization_arithmetic(how: str, values: list[float], expected: list[float]) -> None:
    assert normalized(values, how) == pytest.approx(expected)


def test_min_max_fusion_mixes_scores_of_different_scales() -> None:
    """BM25 in the tens and logits near 0: min_max puts both on [0, 1] before the weights apply."""
    opts = ScoringOptions(score_mode="combine", normalization="min_max", query_weight=0.1, rerank_weight=0.9)
    got = final_scores([30.0, 10.0, 20.0], [-1.0, 1.0, 0.0], opts)
    assert got == pytest.approx([0.1 * 1 + 0.9 * 0, 0.1 * 0 + 0.9 * 1, 0.1 * 0.5 + 0.9 * 0.5])
    plain = final_scores([30.0, 10.0, 20.0], [-1.0, 1.0, 0.0], opts.model_copy(update={"normalization": "none"}))
    assert plain == pytest.approx([0.1 * 30 - 0.9, 0.1 * 10 + 0.9, 0.1 * 20])
    assert final_scores([1.0], [5.0], ScoringOptions(normalization="min_max")) == [5.0]  # replace: untouched
