"""Each search ends in one outcome, and the header, the access log and the metrics all say the same thing."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config import Rule
from sidecar.http.keys import ACCESS_LOG
from sidecar.rerank.failures import Overloaded, ScoringFailed
from tests.fakes import KeyScorer
from tests.servers import Http, SidecarThread, ThreadServer

RULE = Rule(index="docs*", fields=("text",), window_size=20)
SEARCH = {"query": {"match": {"text": "apple"}}}


@pytest.fixture
def corpus(engine: str, http: Http) -> str:
    lines = []
    for i in range(30):
        lines += [json.dumps({"index": {"_index": "docs", "_id": str(i)}}), json.dumps({"text": f"apple pie {i}"})]
    body = ("\n".join(lines) + "\n").encode()
    r = http("POST", engine + "/_bulk?refresh=true", body, headers={"Content-Type": "application/x-ndjson"})
    assert not json.loads(r.data)["errors"]
    return engine


def _samples(http: Http, url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = http("GET", url + "/_sidecar/metrics").data.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _rerank_total(samples: dict[Any, float], outcome: str, reason: str) -> float:
    return samples.get(("sidecar_rerank_total", (("outcome", outcome), ("reason", reason))), 0.0)


def _access_fields(sidecar: SidecarThread, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The rerank= fields of the access lines ``sidecar`` wrote (its buffer written now, on its own loop)."""

    async def flush() -> None:
        sidecar.app[ACCESS_LOG].flush()

    asyncio.run_coroutine_threadsafe(flush(), sidecar.loop).result(timeout=5)
    lines = capsys.readouterr().err.splitlines()
    return [line.rsplit("rerank=", 1)[1] for line in lines if " sidecar.access: " in line]


def test_header_access_log_and_metrics_read_one_outcome(
    corpus: str, make_sidecar: Any, http: Http, capsys: pytest.CaptureFixture[str]
) -> None:
    good = make_sidecar(corpus, scorer=KeyScorer(), rules=(RULE,))
    bad = make_sidecar(corpus, scorer=KeyScorer(fail=True), rules=(RULE,))
    access = logging.getLogger("sidecar.access")
    level = access.level
    access.setLevel(logging.INFO)  # setLevel, not .level: the logger caches what it is enabled for
    try:
        applied = http("POST", good.url + "/docs/_search", SEARCH)
        fallback = http("POST", bad.url + "/docs/_search", SEARCH)
        skipped = http("POST", good.url + "/other/_search", SEARCH)
        msearch = http(
            "POST",
            good.url + "/_msearch",
            b'{"index": "docs"}\n' + json.dumps(SEARCH).encode() + b"\n",
            headers={"Content-Type": "application/x-ndjson"},
        )
        good_fields, bad_fields = _access_fields(good, capsys), _access_fields(bad, capsys)
    finally:
        access.setLevel(level)
    assert applied.headers["X-Rerank"] == "applied; window=20/20"
    assert fallback.headers["X-Rerank"] == "fallback; reason=model_error"
    assert skipped.headers["X-Rerank"] == "skipped; reason=no_rule"
    assert msearch.headers["X-Rerank"] == "applied; items=1"
    assert good_fields == ["applied:20/20", "skipped:no_rule", "applied:items=1"]
    assert bad_fields == ["fallback:model_error"]
    samples = _samples(http, good.url)
    assert _rerank_total(samples, "applied", "rule") == 2.0  # the search and the _msearch item
    assert _rerank_total(samples, "skipped", "no_rule") == 1.0
    assert _rerank_total(_samples(http, bad.url), "fallback", "model_error") == 1.0


class _FailsThenOverloaded(KeyScorer):
    """Fails until told otherwise, then is overloaded once, then scores."""

    def __init__(self) -> None:
        super().__init__()
        self.script = ["fail", "overloaded"]

    async def scores(
        self, model: str, query: str, texts: Sequence[str], *, budget_s: float | None = None
    ) -> list[float]:
        step = self.script.pop(0) if self.script else "ok"
        if step == "fail":
            raise ScoringFailed("model exploded")
        if step == "overloaded":
            raise Overloaded("model [default] queue is full")
        return await super().scores(model, query, texts, budget_s=budget_s)


def test_a_half_open_trial_that_finds_the_queue_full_does_not_wedge_the_circuit(
    corpus: str, make_sidecar: Any, http: Http
) -> None:
    scorer = _FailsThenOverloaded()
    proxy = make_sidecar(corpus, scorer=scorer, rules=(RULE,), breaker_failures=1, breaker_cooldown_s=0.2)

    def rerank() -> str:
        return str(http("POST", proxy.url + "/docs/_search", SEARCH).headers["X-Rerank"])

    assert rerank() == "fallback; reason=model_error"  # the circuit opens
    assert rerank() == "fallback; reason=circuit_open"
    time.sleep(0.25)
    assert rerank() == "fallback; reason=overloaded"  # the trial: no verdict on the model
    assert rerank() == "applied; window=20/20"  # the next search is the trial, and it closes the circuit
    assert json.loads(http("GET", proxy.url + "/_sidecar/ready").data)["models"]["default"].get("circuit") is None


def _garbage_hits_engine() -> web.Application:
    """An upstream whose search replies have hits that are not objects."""

    async def search(request: web.Request) -> web.Response:
        return web.json_response({"took": 1, "hits": {"total": {"value": 2}, "hits": [1, "two"]}})

    async def root(request: web.Request) -> web.Response:
        return web.json_response({"version": {"number": "9.0.0"}})

    app = web.Application()
    app.router.add_post("/{index}/_search", search)
    app.router.add_get("/", root)
    return app


def test_our_own_failure_is_not_reported_as_the_models(make_sidecar: Any, http: Http) -> None:
    scorer = KeyScorer()
    with ThreadServer(_garbage_hits_engine()) as engine:
        proxy = make_sidecar(engine.url, scorer=scorer, rules=(RULE,), breaker_failures=1)
        r = http("POST", proxy.url + "/docs/_search", SEARCH)
        err = json.loads(r.data)
        assert r.status == 500 and err["status"] == 500 and "Traceback" not in r.data.decode()
        assert "X-Rerank" not in r.headers and not scorer.calls
        samples = _samples(http, proxy.url)
        assert _rerank_total(samples, "fallback", "model_error") == 0.0
        assert samples.get(("sidecar_circuit_open", (("model", "default"),)), 0.0) == 0.0
        ready = json.loads(http("GET", proxy.url + "/_sidecar/ready").data)
        assert "circuit" not in ready["models"]["default"]
