"""Hostile and careless clients, over raw sockets: credentials of any bytes, gzip bombs, clients that go away,
clients that trickle or idle, too many connections, HTTP/0.9, and what our replies announce."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from osmem_server import OsmemServer

from sidecar.config import Rule, Settings
from sidecar.http.keys import METRICS
from sidecar.metrics import Metrics
from sidecar.rerank.batcher import Batcher
from sidecar.tools.launch import free_port, serve_process
from tests.fakes import KeyScorer, key_score
from tests.servers import Http, SidecarThread, ThreadServer, index_docs, peak_rss_kb, rss_kb

RULE = Rule(index="docs*", fields=("text",), window_size=20)
SEARCH = json.dumps({"query": {"match": {"text": "apple"}}, "size": 5}).encode()


@pytest.fixture
def corpus(engine: str, http: Http) -> str:
    index_docs(http, engine, (("docs", str(i), {"text": f"apple doc {i}"}) for i in range(40)))
    return engine


# -- raw HTTP ---------------------------------------------------------------------------------------------


def _port(url: str) -> int:
    return int(url.rpartition(":")[2])


def _request(method: str, path: str, body: bytes = b"", headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: sidecar", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if body:
        lines += [b"Content-Type: application/json", b"Content-Length: " + str(len(body)).encode()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _exchange(port: int, data: bytes, timeout: float = 30.0) -> bytes:
    """Send ``data`` and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return _read_to_close(s)


def _read_to_close(s: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(reply: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *fields = head.split(b"\r\n")
    headers = {}
    for field in fields:
        name, _, value = field.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def _closed_within(s: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes ``s`` (reading and discarding whatever it sends), or None if it is still
    open after ``seconds``."""
    start = time.monotonic()
    s.settimeout(0.05)
    while time.monotonic() - start < seconds:
        try:
            if s.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - start
    return None


def _sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


def _until(condition: Callable[[], bool], timeout: float) -> bool:
    """Wait for ``condition`` (polled, not slept for); False if it never held within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- 4. admin credentials of any bytes ---------------------------------------------------------------------

TOKEN = "s3cret-tøken"


@pytest.fixture(scope="module")
def guarded(osmem: OsmemServer) -> Iterator[SidecarThread]:
    clone = osmem.clone()
    server = SidecarThread(Settings(upstream=clone.url, admin_token=TOKEN), scorer=KeyScorer()).start()
    yield server
    server.stop()
    clone.close()


_field_bytes = st.binary(max_size=60).map(lambda b: bytes(c for c in b if c not in b"\r\n"))
_value_bytes = st.lists(st.sampled_from([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)]), max_size=60).map(bytes)


@settings(max_examples=200, deadline=None)
@given(
    value=st.one_of(
        _value_bytes,
        _value_bytes.map(lambda b: b"Bearer " + b),
        _value_bytes.map(lambda b: b"Bearer " + TOKEN.encode() + b),
        _value_bytes.map(lambda b: b + b"Bearer " + TOKEN.encode()),
        st.just(b"Bearer " + TOKEN.encode("latin-1", "replace")),
    ),
    path=st.sampled_from(["/_sidecar/metrics", "/_sidecar/ready"]),
)
def test_any_wrong_credentials_are_401_in_the_engines_format(guarded: SidecarThread, value: bytes, path: str) -> None:
    """Any header value the HTTP parser takes (any byte but controls), ASCII or not: 401, never a 500."""
    if value.strip(b" \t").partition(b" ")[2].strip(b" \t") == TOKEN.encode():
        return  # the one right answer (with a scheme of its own spelling), tested below
    status, _, body = _parse(_exchange(guarded.port, _request("GET", path, headers=[(b"Authorization", value)])))
    assert status == 401, (value, body)
    err = json.loads(body)
    assert err["status"] == 401 and err["error"]["type"] == "security_exception"


@settings(max_examples=100, deadline=None)
@given(value=_field_bytes)
def test_credentials_with_control_bytes_are_refused_never_a_500(guarded: SidecarThread, value: bytes) -> None:
    """Bytes the HTTP parser itself refuses are its 400; every other value is our 401."""
    status, _, body = _parse(
        _exchange(guarded.port, _request("GET", "/_sidecar/metrics", headers=[(b"Authorization", value)]))
    )
    assert status in (400, 401), (value, body)
    assert "error" in json.loads(body)


def test_the_right_token_in_utf8_passes_and_only_it(guarded: SidecarThread) -> None:
    right = b"Bearer " + TOKEN.encode()
    for value in (right, b"bearer " + TOKEN.encode(), b"  BEARER   " + TOKEN.encode() + b"  "):
        status, _, _ = _parse(
            _exchange(guarded.port, _request("GET", "/_sidecar/metrics", headers=[(b"Authorization", value)]))
        )
        assert status == 200, value
    twice = [(b"Authorization", right), (b"Authorization", right)]
    assert _parse(_exchange(guarded.port, _request("GET", "/_sidecar/metrics", headers=twice)))[0] == 401
    assert _parse(_exchange(guarded.port, _request("GET", "/_sidecar/metrics")))[0] == 401
    assert _parse(_exchange(guarded.port, _request("GET", "/_sidecar/health")))[0] == 200  # health needs none


def _json_reply(port: int, path: str, *headers: tuple[bytes, bytes]) -> tuple[int, Any]:
    status, _, body = _parse(_exchange(port, _request("GET", path, headers=headers)))
    return status, json.loads(body)


ADMIN = (b"Authorization", b"Bearer " + TOKEN.encode())


def test_a_probe_without_the_token_gets_the_bare_verdict(guarded: SidecarThread) -> None:
    """Kubernetes' probes send no Authorization header: ready and health answer them, with no details; the
    upstream and the models are for the token's holder. Metrics still need the token."""
    assert _json_reply(guarded.port, "/_sidecar/ready") == (200, {"status": "ready"})
    assert _json_reply(guarded.port, "/_sidecar/health") == (200, {"status": "ok"})
    status, detail = _json_reply(guarded.port, "/_sidecar/ready", ADMIN)
    assert status == 200 and detail["status"] == "ready"
    assert detail["upstream"]["status"] == 200 and set(detail["models"]) == {"default"}
    assert _json_reply(guarded.port, "/_sidecar/metrics")[0] == 401


def test_a_probe_of_a_sidecar_that_is_not_ready_gets_503_without_why() -> None:
    """Not ready (the engine is down): a probe gets 503 in the engine's error format, reason `not ready`; the
    token's holder gets why."""
    server = SidecarThread(
        Settings(upstream=f"http://127.0.0.1:{free_port()}", admin_token=TOKEN, retry_deadline_s=0.3),
        scorer=KeyScorer(),
    ).start()
    try:
        status, probe = _json_reply(server.port, "/_sidecar/ready")
        assert (status, probe["status"], probe["error"]["type"]) == (503, 503, "not_ready_exception")
        assert probe["error"]["reason"] == "not ready" and "127.0.0.1" not in json.dumps(probe)
        status, detail = _json_reply(server.port, "/_sidecar/ready", ADMIN)
        assert status == 503 and detail["error"]["reason"].startswith("upstream not reachable")
        assert _json_reply(server.port, "/_sidecar/health") == (200, {"status": "ok"})  # liveness: still alive
    finally:
        server.stop()


# -- 6. a gzip bomb ---------------------------------------------------------------------------------------


def _gzip_bomb(inflated_mb: int) -> bytes:
    """A search body of ``inflated_mb`` MB (the query, then spaces) in about 1/1000 of that, made a MB at a time."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [packer.compress(b'{"query": {"match_all": {}}, "pad": "')]
    spaces = b" " * (1 << 20)
    parts += [packer.compress(spaces) for _ in range(inflated_mb)]
    parts.append(packer.compress(b'"}') + packer.flush())
    return b"".join(parts)


def _reset_peak_rss(pid: int) -> None:
    """VmHWM back to the current RSS (Linux: 5 > clear_refs), so that the peak measures this request alone."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.mark.slow
def test_a_gzip_bomb_is_413_at_the_limit_with_memory_bounded_by_it(corpus: str, http: Http, tiny_model: str) -> None:
    limit = 1 << 20
    bomb = _gzip_bomb(150)
    assert len(bomb) < 200_000 < limit  # well within the limit as sent
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    with serve_process(corpus, "--model", tiny_model, "--max-search-body-bytes", str(limit)) as (proc, url):
        small = gzip.compress(json.dumps({"query": {"match": {"text": "apple"}}}).encode())
        assert http("POST", url + "/docs/_search", small, headers=headers).status == 200  # warm, and gzip is read
        _reset_peak_rss(proc.pid)
        before = rss_kb(proc.pid)
        r = http("POST", url + "/docs/_search", bomb, headers=headers)
        peak = peak_rss_kb(proc.pid)
        growth_mb = (peak - before) / 1024
        assert growth_mb < 24, growth_mb  # the limit is 1 MB; inflating the bomb whole takes 150
        assert r.status == 413, (r.status, r.data[:300])
        err = json.loads(r.data)
        assert err["status"] == 413 and err["error"]["type"] == "content_too_long_exception"
        assert str(limit) in err["error"]["reason"]
        broken = small[:-12] + b"garbage-crc!"  # a broken gzip still passes to the engine, which judges it
        r = http("POST", url + "/docs/_search", broken, headers=headers)
        assert r.status != 500 and r.headers.get("X-Rerank") == "skipped; reason=unparsed_body", r.data[:300]
    print(f"a 150 MB gzip bomb ({len(bomb) / 1e3:.0f} KB sent): 413, peak RSS grew {growth_mb:.1f} MB")


# -- 10. a client that goes away mid-rerank ------------------------------------------------------------------


class _GatedScorer(KeyScorer):
    """KeyScorer's scores through the real Batcher, four pairs a pass, on a model thread that waits at a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics = Metrics()
        self.entered, self.gate = threading.Event(), threading.Event()
        self.passes: list[int] = []
        self._executor = ThreadPoolExecutor(max_workers=1)
        self.batcher = Batcher("default", self._compute, self._executor, self.metrics, queue_pairs=1000, budget_pairs=4)

    async def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        self.gate.set()
        await self.batcher.close()
        self._executor.shutdown(wait=True)

    def _compute(self, jobs: Sequence[tuple[str, list[str]]]) -> list[list[float]]:
        self.entered.set()
        self.gate.wait(30)
        self.passes.append(sum(len(texts) for _, texts in jobs))
        return [[key_score(query, t) for t in texts] for query, texts in jobs]

    async def scores(
        self, model: str, query: str, texts: Sequence[str], *, budget_s: float | None = None
    ) -> list[float]:
        return await self.batcher.submit(query, list(texts), budget_s=budget_s)


def test_a_client_gone_mid_rerank_takes_its_work_off_the_queue(corpus: str, make_sidecar: Any, http: Http) -> None:
    scorer = _GatedScorer()
    rule = RULE.model_copy(update={"rerank_timeout_ms": 60_000})
    proxy = make_sidecar(corpus, scorer=scorer, rules=(rule,))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(_request("POST", "/docs/_search", SEARCH))
        assert scorer.entered.wait(10)  # its first 4 pairs are in the pass under way, 16 wait
        assert _sample(scorer.metrics, "sidecar_queue_pairs") == 16
    # The client has gone: its waiting pairs leave the queue now (no pass can have taken them: the model is still
    # at the gate), not at the 60 s deadline.
    assert _until(lambda: _sample(scorer.metrics, "sidecar_queue_pairs") == 0, timeout=10)
    assert not scorer.passes and scorer.batcher.waiting_pairs == 0
    assert _sample(scorer.metrics, "sidecar_rerank_dropped_pairs_total") == 16
    scorer.gate.set()
    r = http("POST", proxy.url + "/docs/_search", SEARCH, headers={"Content-Type": "application/json"})
    assert r.status == 200 and r.headers["X-Rerank"].startswith("applied; window=20"), r.headers
    assert sum(scorer.passes) == 4 + 20  # the pass under way, then the next search's own pairs alone


def test_a_write_whose_client_goes_away_is_done_once_upstream(make_sidecar: Any, http: Http) -> None:
    """Handlers are cancelled when their client goes away; a write still reaches the engine whole, once."""
    seen: list[tuple[str, bool]] = []  # (the body, whether the sidecar still waited for the engine's reply)
    arrived, release = threading.Event(), threading.Event()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        arrived.set()
        while not release.is_set():
            await asyncio.sleep(0.01)
        seen.append((body.decode(), request.transport is not None and not request.transport.is_closing()))
        return web.json_response({"result": "created"}, status=201)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    with ThreadServer(app) as engine:
        proxy = make_sidecar(engine.url)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(_request("PUT", "/docs/_doc/1", b'{"text": "kept"}'))
            assert arrived.wait(10)
        release.set()
        assert _until(lambda: bool(seen), timeout=10)
    assert seen == [('{"text": "kept"}', True)]  # not cut off by the sidecar: its client's going changed nothing


# -- 11. slow and idle clients ----------------------------------------------------------------------------

HEADER_S, BODY_S, IDLE_S = 0.6, 0.6, 1.2
SLACK_S = 1.5  # a busy 2-core machine; a limit that does not hold is far outside it (the connection stays open)


def _slow_client(port: int, first: bytes, drip: bytes, every: float, wait: float = 10.0) -> float | None:
    """Connect, send ``first``, then ``drip`` a byte each ``every`` seconds: the seconds until the server closes
    the connection, or None if it is still open after ``wait``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        start = time.monotonic()
        s.sendall(first)
        s.settimeout(every or 0.05)
        rest = iter(drip)
        while time.monotonic() - start < wait:
            try:
                if s.recv(65536) == b"":
                    return time.monotonic() - start
            except TimeoutError:
                byte = next(rest, None)
                if byte is not None:
                    try:
                        s.sendall(bytes([byte]))
                    except OSError:
                        return time.monotonic() - start
            except OSError:
                return time.monotonic() - start
    return None


_POST_HEAD = (
    b"POST /docs/_search HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
)
SLOW_CLIENTS = {
    # name: (first bytes, bytes then sent one at a time, how often, the limit that closes it)
    "silent": (b"", b"", 0, HEADER_S),
    "half_a_request_line": (b"GET /_sidecar/hea", b"", 0, HEADER_S),
    "trickled_headers": (b"GET /_sidecar/health HTTP/1.1\r\n", b"X-A: b\r\n" * 20, 0.05, HEADER_S),
    "trickled_request_line": (b"G", b"ET /_sidecar/health HTTP/1.1\r\nHost: s\r\n", 0.1, HEADER_S),
    "headers_without_their_end": (b"GET /_sidecar/health HTTP/1.1\r\nHost: s\r\n", b"", 0, HEADER_S),
    "stalled_body": (_POST_HEAD + b'{"query"', b"", 0, BODY_S),
    "stalled_body_after_a_while": (_POST_HEAD, b'{"query": {"match_all": {}}, ', 0.1, BODY_S),
    "stalled_chunked_body": (
        b'POST /_bulk HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":',
        b"",
        0,
        BODY_S,
    ),
}


def test_slow_clients_are_closed_at_their_timeouts(corpus: str, make_sidecar: Any) -> None:
    proxy = make_sidecar(
        corpus, rules=(RULE,), header_timeout_s=HEADER_S, body_timeout_s=BODY_S, keepalive_timeout_s=30
    )
    with ThreadPoolExecutor(len(SLOW_CLIENTS)) as pool:
        runs = {name: pool.submit(_slow_client, proxy.port, *client[:3]) for name, client in SLOW_CLIENTS.items()}
        closed = {name: run.result() for name, run in runs.items()}
    for name, (_, drip, every, limit) in SLOW_CLIENTS.items():
        after = closed[name]
        last_byte = every * len(drip) if limit == BODY_S else 0.0  # a body's pause starts at its last byte
        assert after is not None and 0.9 * limit <= after < last_byte + limit + SLACK_S, (name, after)
    metrics = proxy.app[METRICS]
    assert _sample(metrics, "sidecar_connections_closed_total", {"reason": "header_timeout"}) == 5
    assert _sample(metrics, "sidecar_connections_closed_total", {"reason": "body_timeout"}) == 3


def test_a_slow_but_steady_body_and_a_kept_alive_connection_are_served(corpus: str, make_sidecar: Any) -> None:
    """The body timeout is a pause between reads, not a deadline for the whole body; idle connections live for
    the keep-alive timeout and no longer."""
    proxy = make_sidecar(
        corpus, rules=(RULE,), header_timeout_s=HEADER_S, body_timeout_s=BODY_S, keepalive_timeout_s=IDLE_S
    )
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        head = b"POST /docs/_search HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\n"
        s.sendall(head + b"Content-Length: " + str(len(SEARCH)).encode() + b"\r\n\r\n")
        for i in range(0, len(SEARCH), 8):  # the whole body takes 4 x the body timeout, no pause reaches it
            time.sleep(BODY_S / 3)
            s.sendall(SEARCH[i : i + 8])
        reply = s.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        time.sleep(IDLE_S / 2)  # idle, but within the keep-alive timeout: still served
        s.sendall(b"GET /_sidecar/health HTTP/1.1\r\nHost: s\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        after = _closed_within(s, 10)
        assert after is not None and IDLE_S * 0.9 <= after < IDLE_S + SLACK_S, after


def _served(s: socket.socket) -> bool:
    s.sendall(b"GET /_sidecar/health HTTP/1.1\r\nHost: s\r\n\r\n")
    return s.recv(65536).startswith(b"HTTP/1.1 200")


def test_connections_over_the_maximum_are_closed_at_once_and_the_open_ones_served(make_sidecar: Any) -> None:
    proxy = make_sidecar("http://127.0.0.1:9", max_connections=5)
    open_ones = [socket.create_connection(("127.0.0.1", proxy.port), timeout=10) for _ in range(5)]
    try:
        assert all(_served(s) for s in open_ones)
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as extra:
                after = _closed_within(extra, 5)
                assert after is not None and after < 1.0, after  # closed unserved, at once
        assert all(_served(s) for s in open_ones)  # the open ones as before
        open_ones.pop().close()

        def one_more() -> bool:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
                try:
                    return _served(s)
                except OSError:
                    return False

        assert _until(one_more, timeout=5)  # a place freed is taken again
    finally:
        for s in open_ones:
            s.close()
    assert _sample(proxy.app[METRICS], "sidecar_connections_closed_total", {"reason": "max_connections"}) >= 3


# -- 12. protocol: HTTP/0.9 and the Server header -------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE"]),
    path=st.sampled_from(["/docs/_search", "/_search", "/docs/_doc/1", "/", "/_sidecar/health", "/docs/_msearch"]),
    headers=st.lists(
        st.sampled_from([b"Host: s", b"Accept: */*", b"Content-Type: application/json"]), max_size=2, unique=True
    ),
    blank_line=st.booleans(),
    after_a_request=st.booleans(),
)
def test_a_request_line_without_a_version_is_400(
    sidecar_with_docs: SidecarThread,
    method: str,
    path: str,
    headers: list[bytes],
    blank_line: bool,
    after_a_request: bool,
) -> None:
    """HTTP/0.9 (a request is its line alone), with or without headers after it, first on its connection or
    pipelined after a request: 400 at once (the engine's answer too), never the engine's results."""
    first = (
        b"POST /docs/_search HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (
            len(SEARCH),
            SEARCH,
        )
    )
    request = f"{method} {path}\r\n".encode() + b"".join(h + b"\r\n" for h in headers)
    if blank_line or after_a_request:  # pipelined, it is parsed only once its headers end
        request += b"\r\n"
    reply = _exchange(sidecar_with_docs.port, (first if after_a_request else b"") + request, timeout=10)
    if after_a_request:
        status, fields, rest = _parse(reply)
        assert status == 200, reply[:300]
        reply = rest[int(fields[b"content-length"]) :]
    status, fields, body = _parse(reply)
    assert status == 400, reply[:300]
    if method != "HEAD" or not after_a_request:
        assert json.loads(body)["error"]["type"] == "illegal_argument_exception" and b"hits" not in body
    assert b"server" not in fields


@pytest.fixture
def sidecar_with_docs(corpus: str, make_sidecar: Any) -> SidecarThread:
    return make_sidecar(corpus, rules=(RULE,), max_search_body_bytes=4096)  # type: ignore[no-any-return]


_our_replies = st.sampled_from(
    [
        _request("GET", "/_sidecar/health"),
        _request("GET", "/_sidecar/metrics"),
        _request("GET", "/_sidecar/ready"),
        _request("POST", "/docs/_search", SEARCH),  # reranked: our reply
        _request("POST", "/docs/_search", b'{"pad": "' + b"x" * 5000 + b'"}'),  # our 413
        _request("POST", "/docs/_search", b'{"ext": {"rerank": {"window_size": -3}}}'),  # our 400
        _request("GET", "/docs/_count"),  # passed through: the engine's headers
        _request("GET", "/nope/_doc/1"),  # the engine's 404
        b"GET /\x00 HTTP/1.1\r\n\r\n",  # the parser's 400
        b"BREW /coffee HTTP/1.1\r\nHost: s\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: s\r\nContent-Length: x\r\n\r\n",
    ]
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=_our_replies)
def test_no_reply_announces_a_server(sidecar_with_docs: SidecarThread, request: bytes) -> None:
    status, fields, body = _parse(_exchange(sidecar_with_docs.port, request, timeout=10))
    assert b"server" not in fields, (request[:80], status, fields)
    if status >= 400 and fields.get(b"content-type", b"").startswith(b"application/json"):
        assert "error" in json.loads(body)


def test_a_pass_through_reply_keeps_the_engines_server_header(make_sidecar: Any) -> None:
    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"ok": True}, headers={"Server": "TestEngine/7"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    with ThreadServer(app) as engine:
        proxy = make_sidecar(engine.url)
        status, fields, _ = _parse(_exchange(proxy.port, _request("GET", "/docs/_doc/1")))
    assert status == 200 and fields[b"server"] == b"TestEngine/7"
