"""Cascades: each stage reranks the top of the previous stage's order; the reply equals the stages by hand."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from sidecar.config import Rule, Stage
from tests.fakes import KeyScorer, key_score
from tests.servers import Http

QUERY = "apple"


class _PerModel(KeyScorer):
    """A different fixed order for each model name."""

    async def scores(
        self, model: str, query: str, texts: Sequence[str], *, budget_s: float | None = None
    ) -> list[float]:
        self.calls.append((model, query, len(texts)))
        return [key_score(model + query, t) for t in texts]


@pytest.fixture
def corpus(engine: str, http: Http) -> str:
    lines = []
    for i in range(60):
        lines += [
            json.dumps({"index": {"_index": "docs", "_id": str(i)}}),
            json.dumps({"text": f"apple {i} " * (i % 5 + 1)}),
        ]
    body = ("\n".join(lines) + "\n").encode()
    r = http("POST", engine + "/_bulk?refresh=true", body, headers={"Content-Type": "application/x-ndjson"})
    assert not json.loads(r.data)["errors"]
    return engine


def _by_hand(http: Http, engine: str, stages: list[tuple[str, int]], size: int) -> list[str]:
    r = http("POST", engine + "/docs/_search", {"query": {"match": {"text": QUERY}}, "size": stages[0][1]})
    order = [(h["_id"], h["_source"]["text"]) for h in json.loads(r.data)["hits"]["hits"]]
    for model, window in stages:
        head = sorted(enumerate(order[:window]), key=lambda t: (-key_score(model + QUERY, t[1][1]), t[0]))
        order = [doc for _, doc in head] + order[window:]
    return [doc_id for doc_id, _ in order[:size]]


def test_a_rule_cascade_equals_its_stages_applied_by_hand(corpus: str, make_sidecar: Any, http: Http) -> None:
    rule = Rule(index="docs", stages=(Stage(model="fast", window_size=30), Stage(model="precise", window_size=10)))
    scorer = _PerModel(models=("default", "fast", "precise"))
    proxy = make_sidecar(corpus, scorer=scorer, rules=(rule,))
    r = http("POST", proxy.url + "/docs/_search", {"query": {"match": {"text": QUERY}}, "size": 15})
    got = [h["_id"] for h in json.loads(r.data)["hits"]["hits"]]
    assert got == _by_hand(http, corpus, [("fast", 30), ("precise", 10)], 15)
    assert r.headers["X-Rerank"] == "applied; window=30/30" and r.headers["X-Rerank-Model"] == "fast>precise"
    assert [(m, n) for m, _, n in scorer.calls] == [("fast", 30), ("precise", 10)]


def test_ext_rerank_stages_and_their_validation(corpus: str, make_sidecar: Any, http: Http) -> None:
    proxy = make_sidecar(corpus, scorer=_PerModel(models=("default", "fast", "precise")))
    ext: dict[str, Any] = {
        "query_context": {"query_text": QUERY},
        "stages": [{"model": "fast", "window_size": 20}, {"model": "precise", "window_size": 5}],
    }
    body = {"query": {"match": {"text": QUERY}}, "size": 8, "ext": {"rerank": ext}}
    r = http("POST", proxy.url + "/docs/_search", body)
    assert [h["_id"] for h in json.loads(r.data)["hits"]["hits"]] == _by_hand(
        http, corpus, [("fast", 20), ("precise", 5)], 8
    )
    ext["stages"] = [{"model": "fast", "window_size": 5}, {"model": "precise", "window_size": 20}]
    r = http("POST", proxy.url + "/docs/_search", body)
    err = json.loads(r.data)
    assert r.status == 400 and "window_size 20 follows 5" in err["error"]["reason"]
    ext["stages"] = [{"model": "nope", "window_size": 5}]
    r = http("POST", proxy.url + "/docs/_search", body)
    assert r.status == 400 and "unknown model [nope]" in json.loads(r.data)["error"]["reason"]


def test_a_rule_with_rising_windows_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="follows"):
        Rule(index="docs", stages=(Stage(window_size=10), Stage(window_size=20)))
