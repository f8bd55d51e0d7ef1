"""Failing, hanging and overloaded models; fault injection between the sidecar and osmem; hostile input."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import ClientSession, web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config import Rule
from sidecar.rerank.failures import Overloaded
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


DEADLINE_S = 0.3
# What a search costs besides the model's deadline (engine round trip, splicing, loopback), with room for a busy
# 2-core CI machine; a deadline that did not hold (the model hangs 30 s) is far outside it.
OVERHEAD_S = 0.3


def _timed_search(http: Http, url: str, body: Any = None) -> tuple[Any, Any, float]:
    start = time.monotonic()
    r, got = _search(http, url, body)
    return r, got, time.monotonic() - start


def test_a_hanging_model_falls_back_within_the_rules_deadline(corpus: str, make_sidecar: Any, http: Http) -> None:
    """The claim: with ``rerank_timeout_ms: 300`` a search whose model hangs falls back within 300 ms."""
    rule = RULE.model_copy(update={"rerank_timeout_ms": DEADLINE_S * 1000})
    proxy = make_sidecar(corpus, scorer=KeyScorer(hang=30), rules=(rule,))
    assert http("GET", proxy.url + "/docs/_count").status == 200  # a pass-through first: connections are open
    r, got, elapsed = _timed_search(http, proxy.url)
    assert r.status == 200 and r.headers["X-Rerank"] == "fallback; reason=timeout"
    assert DEADLINE_S <= elapsed < DEADLINE_S + OVERHEAD_S, elapsed  # the deadline both waited for and held
    assert [h["_id"] for h in got["hits"]["hits"]] == [h["_id"] for h in _search(http, corpus)[1]["hits"]["hits"]]
    strict = {
        "query": {"match": {"text": "apple"}},
        "ext": {"rerank": {"query_context": {"query_text": "apple"}, "allow_rerank_failures": False}},
    }
    r, err, elapsed = _timed_search(http, proxy.url, strict)
    assert r.status == 503 and err["status"] == 503 and "timeout" in err["error"]["reason"]
    assert DEADLINE_S <= elapsed < DEADLINE_S + OVERHEAD_S, elapsed


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
    samples = _samples(http("GET", proxy.url + "/_sidecar/metrics").data.decode())
    assert samples[("sidecar_circuit_open", (("model", "default"),))] == 1.0
    assert samples[("sidecar_rerank_total", (("outcome", "fallback"), ("reason", "circuit_open")))] == 2.0
    assert samples[("sidecar_rerank_total", (("outcome", "fallback"), ("reason", "model_error")))] == 2.0


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by name and sorted labels; parsed, not searched for."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class _Overloaded(KeyScorer):
    async def scores(
        self, model: str, query: str, texts: Sequence[str], *, budget_s: float | None = None
    ) -> list[float]:
        raise Overloaded("model [default] queue is full")


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


_SESSION = web.AppKey("session", ClientSession)
# The fault proxy's schedule, per kind of request (writes and the rest apart), in order of arrival. "before": the
# engine never sees the request. "after": the engine has done it, then the reply is lost (connection dropped),
# replaced (503) or late (beyond the sidecar's upstream timeout): only a retry of a write could double it.
SCHEDULE = (
    "ok",
    "drop_after",
    "ok",
    "503_before",
    "ok",
    "503_after",
    "reset_before",
    "ok",
    "drop_after",
    "ok",
    "stall_after",
    "ok",
)
STALL_S = 0.6
WRITERS, BATCHES, DOCS = 8, 12, 20


def _fault_app(target: str, stats: Counter[str]) -> web.Application:
    """Forwards to ``target``; injects the faults of ``SCHEDULE``, counting each as ``kind:fault`` in ``stats``."""
    arrived: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        kind = "bulk" if request.path.rstrip("/").endswith("/_bulk") else "other"
        fault = SCHEDULE[arrived[kind] % len(SCHEDULE)]
        arrived[kind] += 1
        stats[f"{kind}:{fault}"] += 1
        if fault == "503_before":
            return web.json_response({"error": {"type": "unavailable"}, "status": 503}, status=503)
        if fault == "reset_before":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with request.app[_SESSION].request(
            request.method, target + request.path_qs, data=body, headers=headers
        ) as r:
            data = await r.read()
        if fault == "drop_after":
            assert request.transport is not None
            request.transport.close()  # the engine has written; the reply never leaves
            return web.Response()
        if fault == "503_after":
            return web.json_response({"error": {"type": "unavailable"}, "status": 503}, status=503)
        if fault == "stall_after":
            await asyncio.sleep(STALL_S)
        return web.Response(status=r.status, body=data, content_type=r.content_type)

    async def session(app: web.Application) -> AsyncIterator[None]:
        async with ClientSession() as s:
            app[_SESSION] = s
            yield

    app = web.Application(client_max_size=64 * 1024**2)
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@dataclass
class _Writes:
    """One writer's view: what the sidecar acknowledged (seq -> the engine's _id) and what it reported failed."""

    acked: dict[str, str] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    bulks: int = 0
    errors: Counter[int] = field(default_factory=Counter)


def _write(url: str, w: int) -> _Writes:
    """``BATCHES`` bulks of ``DOCS`` documents without ids, each with a unique ``seq``; a search after each bulk."""
    http, out = Http(), _Writes()
    for b in range(BATCHES):
        seqs = [f"w{w}-b{b}-d{i}" for i in range(DOCS)]
        lines = []
        for seq in seqs:
            lines += [json.dumps({"index": {"_index": "docs"}}), json.dumps({"text": "apple", "seq": seq})]
        body = ("\n".join(lines) + "\n").encode()
        r = http("POST", url + "/_bulk", body, headers={"Content-Type": "application/x-ndjson"})
        out.bulks += 1
        if r.status == 200:
            items = json.loads(r.data)["items"]
            for seq, item in zip(seqs, items, strict=True):
                result = item["index"]
                if result["status"] in (200, 201):
                    out.acked[seq] = result["_id"]
                else:
                    out.failed.add(seq)
        else:  # a failure the client can see, in the engine's format
            err = json.loads(r.data)
            assert r.status in (502, 503, 504) and err["error"]["type"] and err["status"] == r.status, r.data[:300]
            out.failed.update(seqs)
            out.errors[r.status] += 1
        r = http("POST", url + "/docs/_search", {"query": {"match": {"text": "apple"}}})
        assert r.status in (200, 502, 503, 504), r.data[:300]
    return out


def test_no_acknowledged_write_is_lost_or_doubled_under_faults(engine: str, make_sidecar: Any, http: Http) -> None:
    """Faults after the engine has written: every acknowledged document exists once, failures are reported,
    and nothing is written twice (the sidecar never replays a write)."""
    mapping = {"properties": {"text": {"type": "text"}, "seq": {"type": "keyword"}}}
    assert http("PUT", engine + "/docs", {"mappings": mapping}).status == 200
    stats: Counter[str] = Counter()
    with ThreadServer(_fault_app(engine, stats)) as faulty:
        proxy = make_sidecar(faulty.url, rules=(RULE,), retry_deadline_s=1.0, upstream_timeout_s=STALL_S / 2)
        with ThreadPoolExecutor(WRITERS) as pool:
            results = list(pool.map(lambda w: _write(proxy.url, w), range(WRITERS)))  # re-raises a writer's error
    acked = {seq: doc_id for r in results for seq, doc_id in r.acked.items()}
    failed = set().union(*(r.failed for r in results))
    errors = sum((r.errors for r in results), Counter[int]())
    assert len(acked) + len(failed) == WRITERS * BATCHES * DOCS and not acked.keys() & failed  # each doc answered

    assert http("POST", engine + "/docs/_refresh").status == 200
    body = {"query": {"match_all": {}}, "size": 10_000, "_source": ["seq"]}
    found = json.loads(http("POST", engine + "/docs/_search", body).data)["hits"]
    copies = Counter(h["_source"]["seq"] for h in found["hits"])
    stored = {h["_source"]["seq"]: h["_id"] for h in found["hits"]}
    assert found["total"]["value"] == len(found["hits"]) < 10_000  # all of them fetched
    assert not {seq: n for seq, n in copies.items() if n > 1}  # (c) no document written twice
    assert {seq: stored.get(seq) for seq in acked} == acked  # (a) every acknowledged one, under the id we were told
    assert stored.keys() <= acked.keys() | failed
    written_anyway = failed & stored.keys()
    assert written_anyway  # the engine wrote these before the fault: a replay would have doubled them
    # (b) failed writes reached the client as errors: a lost reply (502), a 503, a timeout (504).
    assert errors[502] > 0 and errors[503] > 0 and errors[504] > 0, errors
    # The sidecar sent each client's write exactly once (retried reads are the only extra arrivals).
    assert sum(n for key, n in stats.items() if key.startswith("bulk:")) == sum(r.bulks for r in results)
    assert all(stats[f"bulk:{fault}"] > 0 for fault in SCHEDULE), stats
    print(
        f"faults {dict(stats)}; {len(acked)} documents acknowledged and verified once each, {len(failed)} reported "
        f"failed ({dict(errors)} by status), {len(written_anyway)} of them written by the engine all the same"
    )


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
        assert "error" in err, err  # the engine's error shape (osmem's own 400s carry no "status")
        if err.get("status") is not None:
            assert err["status"] == r.status, err
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


class _Load:
    """Searches from ``threads`` threads until stopped, each with its own connections; records what came back.

    Each answer is stored with the phase the test was in when its request was sent (``ANY`` phase matches all).
    A thread's exception is kept in ``errors`` (and ends that thread), never lost; ``wait`` fails early on one.
    """

    ANY = "any"

    def __init__(self, url: str, threads: int) -> None:
        self.url = url
        self.phase = "up"
        self.answers: list[tuple[str, int, bytes]] = []  # (phase at send, status, body)
        self.errors: list[BaseException] = []
        self.seen: dict[tuple[str, int], threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def event(self, phase: str, status: int) -> threading.Event:
        """Set once a request sent in ``phase`` is answered ``status``."""
        with self._lock:
            return self.seen.setdefault((phase, status), threading.Event())

    def _run(self) -> None:
        http = Http()
        try:
            while not self._stop.is_set():
                phase = self.phase
                r = http("POST", self.url + "/docs/_search", {"query": {"match": {"text": "apple"}}})
                with self._lock:
                    self.answers.append((phase, r.status, r.data))
                self.event(phase, r.status).set()
                self.event(self.ANY, r.status).set()
        except BaseException as e:
            with self._lock:
                self.errors.append(e)

    def wait(self, phase: str, status: int, timeout: float) -> None:
        event, deadline = self.event(phase, status), time.monotonic() + timeout
        while not event.wait(0.05):
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, f"no {status} to a request sent in phase {phase} in {timeout} s"

    def __enter__(self) -> _Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        if exc_type is None:  # never hide the error that ended the block
            assert not any(t.is_alive() for t in self._threads), "a load thread did not stop within 30 s"


def test_engine_killed_and_restarted_the_sidecar_reports_and_recovers(make_sidecar: Any, http: Http) -> None:
    from osmem_server import OsmemServer

    from sidecar.tools.launch import free_port

    addr = f"127.0.0.1:{free_port()}"
    engines = [OsmemServer.start(japanese=False, addr=addr)]
    try:
        proxy = make_sidecar(engines[0].url, rules=(RULE,), retry_deadline_s=0.5)
        http("PUT", proxy.url + "/docs", {"mappings": {"properties": {"text": {"type": "text"}}}})
        http("POST", proxy.url + "/docs/_doc?refresh=true", {"text": "apple"})
        assert _search(http, proxy.url)[0].headers["X-Rerank"].startswith("applied; window=")

        with _Load(proxy.url, threads=4) as load:  # searches keep coming while the engine dies and comes back
            load.wait("up", 200, timeout=30)
            load.phase = "down"
            engines[0].process.kill()  # the engine dies without a goodbye
            engines[0].process.wait(timeout=30)
            # Down until a search of the load has been answered 502: its retries must not bridge the outage.
            load.wait(load.ANY, 502, timeout=30)
            r, err = _search(http, proxy.url)
            assert r.status == 502 and err["error"]["type"] and err["status"] == 502
            ready = http("GET", proxy.url + "/_sidecar/ready")
            assert ready.status == 503 and "upstream" in json.loads(ready.data)["error"]["reason"]
            assert http("GET", proxy.url + "/_sidecar/health").status == 200

            load.phase = "restarting"
            engines.append(OsmemServer.start(japanese=False, addr=addr))  # the same address, empty (in memory)
            assert http("GET", proxy.url + "/_sidecar/ready").status == 200
            http("POST", proxy.url + "/docs/_doc?refresh=true", {"text": "apple again"})
            r, got = _search(http, proxy.url)
            assert r.status == 200 and got["hits"]["total"]["value"] == 1
            load.phase = "recovered"
            load.wait("recovered", 200, timeout=30)
    finally:
        for engine in engines:
            engine.close()
    assert not load.errors, load.errors
    by_phase: dict[str, Counter[int]] = {}
    for phase, status, data in load.answers:
        by_phase.setdefault(phase, Counter())[status] += 1
        if status != 200:
            assert "error" in json.loads(data), data[:300]  # every failure in the engine's format
    # A search in flight at a change of phase may end in the next one: one sent while up can be retried into
    # the outage (502) or even into the restarted engine, empty at first (404).
    assert set().union(*by_phase.values()) <= {200, 404, 502}, by_phase
    assert by_phase["up"][200] > 0 and sum(c[502] for c in by_phase.values()) > 0, by_phase
    assert set(by_phase["recovered"]) == {200}, by_phase  # every search sent after the recovery succeeds


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
