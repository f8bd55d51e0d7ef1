"""Failing, hanging and overloaded models; fault injection between the sidecar and osmem; hostile input."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiohttp import ClientSession, web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.config import Rule
from sidecar.errors import TooManyRequests
from tests.fakes import KeyScorer
from tests.servers import Http, ThreadServer

RULE = Rule(index="docs*", fields=("text",), window_size=20)


@pytest.fixture
def corpus(engine: str, http: Http) -> str:
    lines = []
    for i in range(40):
        lines += [json.dumps({"index": {"_index": "docs", "_id": str(i)}}), json.dumps({"text": f"apple doc {i}"})]
    body = ("\n".join(lines) + "\n").encode()
    http("POST", engine + "/_bulk?refresh=true", body, headers={"Content-Type": "application/x-ndjson"})
    return engine


def _search(http: Http, url: str, body: Any = None) -> tuple[Any, Any]:
    r = http("POST", url + "/docs/_search", body or {"query": {"match": {"text": "apple"}}, "size": 5})
    return r, json.loads(r.data)


def test_a_hanging_model_falls_back_within_the_rules_deadline(corpus: str, make_sidecar: Any, http: Http) -> None:
    rule = RULE.model_copy(update={"rerank_timeout_ms": 300})
    proxy = make_sidecar(corpus, scorer=KeyScorer(hang=30), rules=(rule,))
    start = time.monotonic()
    r, got = _search(http, proxy.url)
    assert time.monotonic() - start < 3
    assert r.status == 200 and r.headers["X-Rerank"] == "fallback; reason=timeout"
    assert [h["_id"] for h in got["hits"]["hits"]] == [h["_id"] for h in _search(http, corpus)[1]["hits"]["hits"]]
    strict = {
        "query": {"match": {"text": "apple"}},
        "ext": {"rerank": {"query_context": {"query_text": "apple"}, "allow_rerank_failures": False}},
    }
    r, err = _search(http, proxy.url, strict)
    assert r.status == 503 and err["status"] == 503 and "timeout" in err["error"]["reason"]


def test_circuit_opens_after_failures_and_shows_on_ready_and_metrics(
    corpus: str, make_sidecar: Any, http: Http
) -> None:
    scorer = KeyScorer(fail=True)
    proxy = make_sidecar(corpus, scorer=scorer, rules=(RULE,), breaker_failures=2, breaker_cooldown_s=60)
    reasons = [_search(http, proxy.url)[0].headers["X-Rerank"] for _ in range(4)]
    assert reasons == ["fallback; reason=model_error"] * 2 + ["fallback; reason=circuit_open"] * 2
    assert len(scorer.calls) == 2  # no work reaches a model whose circuit is open
    ready = json.loads(http("GET", proxy.url + "/_sidecar/ready").data)
    assert ready["models"]["default"]["circuit"] == "open"
    metrics = http("GET", proxy.url + "/_sidecar/metrics").data.decode()
    assert 'sidecar_circuit_open{model="' in metrics and "} 1.0" in metrics.split("sidecar_circuit_open{")[1]
    assert 'sidecar_rerank_total{outcome="fallback",reason="circuit_open"} 2.0' in metrics


class _Overloaded(KeyScorer):
    async def scores(self, model: str | None, query: str, texts: Sequence[str]) -> list[float]:
        raise TooManyRequests("model [default] queue is full", headers={"Retry-After": "1"})


def test_a_full_queue_falls_back_or_answers_429(corpus: str, make_sidecar: Any, http: Http) -> None:
    proxy = make_sidecar(corpus, scorer=_Overloaded(), rules=(RULE,))
    assert _search(http, proxy.url)[0].headers["X-Rerank"] == "fallback; reason=overloaded"
    strict = make_sidecar(corpus, scorer=_Overloaded(), rules=(RULE,), overload="429")
    r, err = _search(http, strict.url)
    assert (
        r.status == 429
        and r.headers["Retry-After"] == "1"
        and err["error"]["type"] == "es_rejected_execution_exception"
    )


def test_credentials_are_never_logged(
    corpus: str, make_sidecar: Any, http: Http, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = make_sidecar(corpus, rules=(RULE,))
    secret = "Basic c2VjcmV0LXVzZXI6aHVudGVyMg=="
    with caplog.at_level(logging.DEBUG):
        for path in ("/docs/_search", "/docs/_doc/1", "/_sidecar/ready", "/nope/_search"):
            http("POST" if "search" in path else "GET", proxy.url + path, {}, headers={"Authorization": secret})
    assert caplog.records and all(
        secret not in r.getMessage() and "hunter2" not in r.getMessage() for r in caplog.records
    )


# -- fault injection: a proxy of our own between the sidecar and osmem ------------------------------------


def _fault_app(target: str, rng: random.Random, stats: dict[str, int]) -> web.Application:
    """Forwards to ``target``; before forwarding some requests it answers 503, stalls, or drops the connection."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        roll = rng.random()
        if roll < 0.10:
            stats["503"] += 1
            return web.json_response({"error": {"type": "unavailable"}, "status": 503}, status=503)
        if roll < 0.18:
            stats["reset"] += 1
            assert request.transport is not None
            request.transport.close()  # connection dropped before any reply
            return web.Response()
        if roll < 0.22:
            stats["delay"] += 1
            await asyncio.sleep(0.3)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with (
            ClientSession() as s,
            s.request(request.method, target + request.path_qs, data=body, headers=headers) as r,
        ):
            data = await r.read()
            return web.Response(status=r.status, body=data, content_type=r.content_type)

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def test_no_acknowledged_write_is_lost_or_doubled_under_faults(engine: str, make_sidecar: Any, http: Http) -> None:
    stats = {"503": 0, "reset": 0, "delay": 0}
    with ThreadServer(_fault_app(engine, random.Random(5), stats)) as faulty:
        proxy = make_sidecar(faulty.url, rules=(RULE,), retry_deadline_s=1.0)

        def writer(w: int) -> tuple[set[str], set[str], int]:
            acked, failed, searches = set(), set(), 0
            for b in range(15):
                ids = [f"w{w}-b{b}-{i}" for i in range(20)]
                lines = []
                for doc_id in ids:
                    lines += [json.dumps({"index": {"_index": "docs", "_id": doc_id}}), json.dumps({"text": "apple"})]
                r = http(
                    "POST",
                    proxy.url + "/_bulk",
                    ("\n".join(lines) + "\n").encode(),
                    headers={"Content-Type": "application/x-ndjson"},
                )
                if r.status == 200:
                    items = json.loads(r.data)["items"]
                    for item in items:
                        result = item["index"]
                        (acked if result["status"] in (200, 201) else failed).add(result["_id"])
                else:
                    assert json.loads(r.data)["error"]["type"]  # a failure the client can see
                    failed.update(ids)
                r = http("POST", proxy.url + "/docs/_search", {"query": {"match": {"text": "apple"}}})
                searches += 1
                assert r.status in (200, 502, 503), r.data[:300]
            return acked, failed, searches

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(writer, range(8)))
    acked = set().union(*(r[0] for r in results))
    failed = set().union(*(r[1] for r in results))
    http("POST", engine + "/docs/_refresh")
    body = {"query": {"match_all": {}}, "size": 10_000, "_source": False}
    stored = [h["_id"] for h in json.loads(http("POST", engine + "/docs/_search", body).data)["hits"]["hits"]]
    assert len(stored) == len(set(stored))  # nothing twice
    assert acked <= set(stored)  # every acknowledged document is there
    assert sum(stats.values()) > 20 and stats["reset"] > 0 and stats["503"] > 0
    print(f"faults {stats}; {len(acked)} documents acknowledged and verified, {len(failed)} reported failed")


# -- hostile input ----------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_keys = st.sampled_from(["query", "size", "from", "ext", "retriever", "sort", "_source", "rescore", "min_score"])
_bodies = st.one_of(
    st.dictionaries(_keys, _json, max_size=5),
    st.builds(lambda q, e: {"query": {"match": {"text": q}}, "ext": {"rerank": e}}, st.text(max_size=30), _json),
    st.builds(
        lambda r: {"retriever": {"text_similarity_reranker": r}},
        st.dictionaries(st.sampled_from(["retriever", "field", "inference_text", "rank_window_size", "x"]), _json),
    ),
)
_paths = st.sampled_from(
    ["/docs/_search", "/docs,other/_search", "/_search", "/docs/_msearch", "/_msearch", "/d*/_search"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_bodies, path=_paths, raw=st.booleans(), junk=st.binary(max_size=40))
def test_fuzzed_searches_never_get_a_500_from_us(
    fuzz_target: tuple[str, Http], body: Any, path: str, raw: bool, junk: bytes
) -> None:
    url, http = fuzz_target
    if "_msearch" in path:
        data = (json.dumps({}) + "\n" + json.dumps(body) + "\n").encode() + (junk if raw else b"")
        r = http("POST", url + path, data, headers={"Content-Type": "application/x-ndjson"})
    else:
        data = junk if raw else json.dumps(body).encode()
        r = http("POST", url + path, data, headers={"Content-Type": "application/json"})
    assert r.status != 500 or (r.headers.get("X-Rerank") is None and b"rerank sidecar" not in r.data)
    assert b"Traceback" not in r.data
    if r.status >= 400 and r.data:
        err = json.loads(r.data)
        assert ("error" in err and "status" in err) or "error" in err  # the engine's error shape
    assert http("GET", url + "/_sidecar/health").status == 200


@pytest.fixture(scope="module")
def fuzz_target(osmem: Any) -> Any:
    from sidecar.config import Settings
    from tests.servers import SidecarThread

    clone = osmem.clone()
    http = Http()
    http("PUT", clone.url + "/docs", {"mappings": {"properties": {"text": {"type": "text"}}}})
    http("POST", clone.url + "/docs/_doc?refresh=true", {"text": "apple banana"})
    server = SidecarThread(Settings(upstream=clone.url, rules=(RULE,)), scorer=KeyScorer()).start()
    yield server.url, http
    server.stop()
    clone.close()


def test_engine_killed_and_restarted_the_sidecar_reports_and_recovers(make_sidecar: Any, http: Http) -> None:
    from osmem_server import OsmemServer

    from sidecar.tools.launch import free_port

    addr = f"127.0.0.1:{free_port()}"
    first = OsmemServer.start(japanese=False, addr=addr)
    proxy = make_sidecar(first.url, rules=(RULE,), retry_deadline_s=0.5)
    http("PUT", proxy.url + "/docs", {"mappings": {"properties": {"text": {"type": "text"}}}})
    http("POST", proxy.url + "/docs/_doc?refresh=true", {"text": "apple"})
    assert _search(http, proxy.url)[0].headers["X-Rerank"] == "applied"

    statuses: list[int] = []
    malformed: list[bytes] = []
    stop = threading.Event()

    def load() -> None:  # searches keep coming while the engine dies and comes back
        while not stop.is_set():
            r = http("POST", proxy.url + "/docs/_search", {"query": {"match": {"text": "apple"}}})
            statuses.append(r.status)
            if r.status != 200 and "error" not in json.loads(r.data):
                malformed.append(r.data)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    first.process.kill()  # the engine dies without a goodbye
    first.process.wait()
    r, err = _search(http, proxy.url)
    assert r.status == 502 and err["error"]["type"] and err["status"] == 502
    ready = http("GET", proxy.url + "/_sidecar/ready")
    assert ready.status == 503 and "upstream" in json.loads(ready.data)["error"]["reason"]
    assert http("GET", proxy.url + "/_sidecar/health").status == 200

    second = OsmemServer.start(japanese=False, addr=addr)  # back on the same address, empty (in memory)
    try:
        assert http("GET", proxy.url + "/_sidecar/ready").status == 200
        http("POST", proxy.url + "/docs/_doc?refresh=true", {"text": "apple again"})
        r, got = _search(http, proxy.url)
        assert r.status == 200 and got["hits"]["total"]["value"] == 1
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        second.close()
    assert not malformed and set(statuses) <= {200, 404, 502}  # 404: the restarted engine is empty at first
    assert statuses.count(200) > 0 and statuses.count(502) > 0 and statuses[-1] == 200


def test_limits_answer_in_the_engines_format(corpus: str, make_sidecar: Any, http: Http) -> None:
    proxy = make_sidecar(corpus, rules=(RULE,), max_msearch_items=2, max_query_chars=50, max_search_body_bytes=2000)
    r, err = _search(http, proxy.url, {"query": {"match": {"text": "apple " * 20}}})
    assert r.status == 400 and err["error"]["type"] == "illegal_argument_exception" and "max" in err["error"]["reason"]
    lines = "".join(
        json.dumps({}) + "\n" + json.dumps({"query": {"match": {"text": "apple"}}}) + "\n" for _ in range(3)
    )
    r = http("POST", proxy.url + "/docs/_msearch", lines.encode(), headers={"Content-Type": "application/x-ndjson"})
    assert r.status == 400 and "max_msearch_items" in json.loads(r.data)["error"]["reason"]
    r, err = _search(http, proxy.url, {"query": {"match": {"text": "apple"}}, "pad": "x" * 3000})
    assert r.status == 413 and err["status"] == 413
    big = ("\n".join([json.dumps({"index": {"_index": "docs"}}), json.dumps({"text": "y" * 5000})]) + "\n").encode()
    assert http("POST", proxy.url + "/_bulk", big, headers={"Content-Type": "application/x-ndjson"}).status == 200


_header_names = st.sampled_from(
    ["Host", "X-Forwarded-Host", "X-Forwarded-For", "X-Rerank", "Content-Encoding", "Accept", "X-Opaque-Id", "X-Junk"]
)
_header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
_segments = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#%"), max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    headers=st.dictionaries(_header_names, _header_values, max_size=4),
    segments=st.lists(_segments, min_size=1, max_size=3),
    tail=st.sampled_from(["_search", "_msearch", "_count", "", "_doc/1"]),
)
def test_fuzzed_headers_and_paths_never_get_a_500_from_us(
    fuzz_target: tuple[str, Http], headers: dict[str, str], segments: list[str], tail: str
) -> None:
    url, http = fuzz_target
    path = "/" + "/".join(urllib.parse.quote(s, safe="") for s in [*segments, tail] if s)
    body = json.dumps({"query": {"match": {"text": "apple"}}}).encode()
    r = http("POST", url + path, body, headers={"Content-Type": "application/json", **headers})
    assert b"Traceback" not in r.data
    assert r.status != 500 or b"rerank sidecar" not in r.data
    if r.status >= 400 and r.data and r.headers.get("Content-Type", "").startswith("application/json"):
        assert "error" in json.loads(r.data)
    assert http("GET", url + "/_sidecar/health").status == 200
