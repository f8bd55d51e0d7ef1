"""Remote scorers over real sockets: a second sidecar is the remote model server (its TEI shape as ``api: sidecar``,
its Cohere v2 shape as ``api: cohere``), the sidecar under test reranks searches and rerank API calls through it."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from sidecar.rerank.api import sigmoid
from sidecar.rerank.failures import Overloaded
from sidecar.tools.launch import free_port, serve_process
from tests.fakes import KeyScorer, key_score
from tests.servers import Http, SidecarThread, index_docs

NO_ENGINE = "http://127.0.0.1:9"  # the remote only serves its rerank API
QUERY = "apple"
SEARCH = {"query": {"match": {"text": QUERY}}, "size": 10}
KEY = "sk-remote-0123456789-secret"

Make = Callable[..., SidecarThread]


class _Overloaded(KeyScorer):
    async def scores(
        self, model: str, query: str, texts: Sequence[str], *, budget_s: float | None = None, tier: int = 0
    ) -> list[float]:
        self.calls.append((model, query, len(texts)))
        raise Overloaded("queue full")


def small_score(query: str, text: str) -> float:
    """``key_score`` in [-2.5, 2.5]: its sigmoid keeps the order (key_score's own, up to 100, rounds to 1.0)."""
    return key_score(query, text) / 20 - 2.5


class _Small(KeyScorer):
    async def scores(
        self, model: str, query: str, texts: Sequence[str], *, budget_s: float | None = None, tier: int = 0
    ) -> list[float]:
        self.calls.append((model, query, len(texts)))
        return [small_score(query, t) for t in texts]


@pytest.fixture
def corpus(engine: str, http: Http) -> str:
    index_docs(http, engine, (("docs", str(i), {"text": f"apple pie {i}"}) for i in range(30)))
    return engine


def _proxy(make: Make, engine: str, far: dict[str, Any], window: int = 20, **settings: Any) -> SidecarThread:
    """The sidecar under test: no local model, one remote model ``far``, a rule that reranks with it."""
    rule = {"index": "docs", "fields": ["text"], "window_size": window, "model": "far"}
    return make(engine, model="none", models={"far": far}, rules=[rule], **settings)


def _search(http: Http, url: str) -> tuple[Any, list[dict[str, Any]]]:
    r = http("POST", url + "/docs/_search", SEARCH)
    assert r.status == 200, r.data[:300]
    return r, json.loads(r.data)["hits"]["hits"]


def _expected(http: Http, engine: str, window: int, score: Callable[[str, str], float] = key_score) -> list[str]:
    hits = json.loads(http("POST", engine + "/docs/_search", {**SEARCH, "size": window}).data)["hits"]["hits"]
    order = sorted(range(len(hits)), key=lambda i: (-score(QUERY, hits[i]["_source"]["text"]), i))
    return [hits[i]["_id"] for i in order][:10]


def test_api_sidecar_reranks_a_search_in_the_remotes_order_with_its_raw_scores(
    corpus: str, make_sidecar: Make, http: Http
) -> None:
    remote_scorer = KeyScorer()
    remote = make_sidecar(NO_ENGINE, remote_scorer)
    proxy = _proxy(make_sidecar, corpus, {"url": remote.url + "/_sidecar", "api": "sidecar"})
    r, hits = _search(http, proxy.url)
    assert r.headers["X-Rerank"] == "applied; window=20/20" and r.headers["X-Rerank-Model"] == "far"
    assert [h["_id"] for h in hits] == _expected(http, corpus, 20)
    for h in hits:  # TEI's raw_scores: the remote model's own scores, not squashed
        assert h["_score"] == pytest.approx(key_score(QUERY, h["_source"]["text"]))
    assert remote_scorer.calls == [("default", QUERY, 20)]  # the remote's default model, one request
    ready = json.loads(http("GET", proxy.url + "/_sidecar/ready").data)
    assert ready["models"] == {"far": {"state": "ready", "url": remote.url + "/_sidecar", "api": "sidecar"}}
    _search(http, proxy.url)
    assert len(remote_scorer.calls) == 1  # the second search's scores come from the proxy's score cache


def test_api_cohere_against_our_own_v2_api_and_the_rerank_api_through_the_remote(
    corpus: str, make_sidecar: Make, http: Http
) -> None:
    remote_scorer = _Small(models=("default", "big"))
    remote = make_sidecar(NO_ENGINE, remote_scorer)
    spec = {"url": remote.url + "/_sidecar", "api": "cohere", "remote_model": "big"}
    proxy = _proxy(make_sidecar, corpus, spec)
    r, hits = _search(http, proxy.url)
    assert r.headers["X-Rerank"] == "applied; window=20/20" and r.headers["X-Rerank-Model"] == "far"
    assert [h["_id"] for h in hits] == _expected(http, corpus, 20, small_score)
    for h in hits:  # Cohere's relevance_score: the remote's sigmoid of its model's score
        assert h["_score"] == pytest.approx(sigmoid(small_score(QUERY, h["_source"]["text"])))
    assert remote_scorer.calls == [("big", QUERY, 20)]  # the remote_model it was asked for
    # The proxy's own Cohere API with model far: the remote's probabilities, not squashed a second time.
    docs = ["apple pie", "pear tart", "plum jam"]
    reply = http("POST", proxy.url + "/_sidecar/v2/rerank", {"model": "far", "query": QUERY, "documents": docs})
    assert reply.status == 200, reply.data
    results = json.loads(reply.data)["results"]
    assert [r["index"] for r in results] == sorted(range(3), key=lambda i: -small_score(QUERY, docs[i]))
    for res in results:
        assert res["relevance_score"] == pytest.approx(sigmoid(small_score(QUERY, docs[res["index"]])))


def test_a_cascade_of_a_local_model_then_a_remote_one(
    corpus: str, make_sidecar: Make, http: Http, tiny_model: str
) -> None:
    """The router sends each stage to its backend: the local (tiny) default model on 20, the remote on its top 5."""
    remote_scorer = KeyScorer()
    remote = make_sidecar(NO_ENGINE, remote_scorer)
    stages = [{"model": "default", "window_size": 20}, {"model": "far", "window_size": 5}]
    rule = {"index": "docs", "fields": ["text"], "stages": stages}
    far = {"url": remote.url + "/_sidecar", "api": "sidecar"}
    proxy = make_sidecar(corpus, model=tiny_model, models={"far": far}, rules=[rule])
    r, hits = _search(http, proxy.url)
    assert r.headers["X-Rerank"] == "applied; window=20/20" and r.headers["X-Rerank-Model"] == "default>far"
    assert remote_scorer.calls == [("default", QUERY, 5)]
    top = sorted(hits[:5], key=lambda h: -key_score(QUERY, h["_source"]["text"]))
    assert hits[:5] == top  # the remote's order on the local model's top 5
    assert set(json.loads(http("GET", proxy.url + "/_sidecar/ready").data)["models"]) == {"default", "far"}


def test_max_batch_splits_a_window_into_concurrent_requests_stitched_in_order(
    corpus: str, make_sidecar: Make, http: Http
) -> None:
    remote_scorer = KeyScorer()
    remote = make_sidecar(NO_ENGINE, remote_scorer)
    proxy = _proxy(make_sidecar, corpus, {"url": remote.url + "/_sidecar", "api": "sidecar", "max_batch": 3})
    r, hits = _search(http, proxy.url)
    assert r.headers["X-Rerank"] == "applied; window=20/20"
    assert [h["_id"] for h in hits] == _expected(http, corpus, 20)
    assert sorted(n for _, _, n in remote_scorer.calls) == [2] + [3] * 6  # ceil(20 / 3) requests
    assert len(remote_scorer.calls) == math.ceil(20 / 3)


def test_a_remote_that_is_down_falls_back_then_its_circuit_opens(corpus: str, make_sidecar: Make, http: Http) -> None:
    down = f"http://127.0.0.1:{free_port()}/_sidecar"  # nothing listens there
    proxy = _proxy(make_sidecar, corpus, {"url": down, "api": "sidecar"}, breaker_failures=2, rerank_timeout_ms=1000)
    engine_order = [h["_id"] for h in json.loads(http("POST", corpus + "/docs/_search", SEARCH).data)["hits"]["hits"]]
    reasons = []
    for _ in range(3):
        r, hits = _search(http, proxy.url)
        reasons.append(r.headers["X-Rerank"])
        assert [h["_id"] for h in hits] == engine_order
    assert reasons == ["fallback; reason=remote_unavailable"] * 2 + ["fallback; reason=circuit_open"]
    ready = json.loads(http("GET", proxy.url + "/_sidecar/ready").data)
    assert ready["models"]["far"]["circuit"] == "open"


def test_a_429_from_the_remote_is_overloaded(corpus: str, make_sidecar: Make, http: Http) -> None:
    remote = make_sidecar(NO_ENGINE, _Overloaded())
    proxy = _proxy(make_sidecar, corpus, {"url": remote.url + "/_sidecar", "api": "sidecar"}, breaker_failures=1)
    for _ in range(2):  # not the model's fault: the circuit stays closed
        r, _hits = _search(http, proxy.url)
        assert r.headers["X-Rerank"] == "fallback; reason=overloaded"
    reply = http("POST", proxy.url + "/_sidecar/v2/rerank", {"model": "far", "query": QUERY, "documents": ["a"]})
    assert reply.status == 429 and reply.headers["Retry-After"] == "1"


def test_the_api_key_is_sent_as_a_bearer_and_never_logged(
    corpus: str, make_sidecar: Make, http: Http, caplog: pytest.LogCaptureFixture
) -> None:
    remote = make_sidecar(NO_ENGINE, KeyScorer(), rerank_api_keys=(KEY,))
    url = remote.url + "/_sidecar"
    with caplog.at_level(logging.DEBUG):
        keyed = _proxy(make_sidecar, corpus, {"url": url, "api": "sidecar", "api_key": KEY})
        wrong = _proxy(make_sidecar, corpus, {"url": url, "api": "sidecar", "api_key": "sk-wrong"})
        none = _proxy(make_sidecar, corpus, {"url": url, "api": "sidecar"})
        assert _search(http, keyed.url)[0].headers["X-Rerank"] == "applied; window=20/20"
        for refused in (wrong, none):  # the remote's 401: counts against the model, as any failure of it
            assert _search(http, refused.url)[0].headers["X-Rerank"] == "fallback; reason=model_error"
    assert KEY not in caplog.text and "sk-wrong" not in caplog.text
    assert KEY not in http("GET", keyed.url + "/_sidecar/ready").data.decode()


def test_no_torch_is_imported_when_every_model_is_remote(tmp_path: Path) -> None:
    """The app built and started with `model: none` and only remote models loads nothing: torch is never imported."""
    script = """
import asyncio, sys
from sidecar import cli  # noqa: F401  (the serve command's own imports)
from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.http.keys import PIPELINE

async def main():
    s = Settings(model="none", models={"far": {"url": "http://127.0.0.1:9/_sidecar", "api": "sidecar"}})
    app = create_app(s)
    await app[PIPELINE].start()
    assert app[PIPELINE].readiness()["far"]["state"] == "ready"
    await app[PIPELINE].close()

asyncio.run(main())
print("torch" in sys.modules, "transformers" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"], done.stdout


@pytest.mark.slow
def test_a_serve_process_with_model_none_reranks_through_a_remote_only(
    corpus: str, make_sidecar: Make, http: Http, tmp_path: Path
) -> None:
    remote_scorer = KeyScorer()
    remote = make_sidecar(NO_ENGINE, remote_scorer, rerank_api_keys=(KEY,))
    config = tmp_path / "sidecar.yaml"
    far = {"url": remote.url + "/_sidecar", "api": "sidecar"}
    rule = {"index": "docs", "fields": ["text"], "window_size": 20, "model": "far"}
    config.write_text(json.dumps({"models": {"far": far}, "rules": [rule]}))
    env = {"HF_HUB_OFFLINE": "1", "SIDECAR_MODELS__FAR__API_KEY": KEY}  # the key from the environment
    flags = ("--model", "none", "--config", str(config))
    with serve_process(corpus, *flags, env=env, ready_path="/_sidecar/ready") as (_, url):
        r, hits = _search(http, url)
        assert r.headers["X-Rerank"] == "applied; window=20/20" and r.headers["X-Rerank-Model"] == "far"
        assert [h["_id"] for h in hits] == _expected(http, corpus, 20)
        assert remote_scorer.calls == [("default", QUERY, 20)]
        ready = json.loads(http("GET", url + "/_sidecar/ready").data)
        assert ready["status"] == "ready" and list(ready["models"]) == ["far"]
