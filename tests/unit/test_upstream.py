"""Upstream: errors translated where aiohttp is touched, reads retried under a real deadline (on another node when
there is one), writes never, and every request goes to a configured node with that node's Host header.

Most tests open no socket: the session comes from ``default_session`` (the app's own settings) with a connector
that connects nowhere. Those that need a real reply use an in-process server on loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.test_utils import TestServer
from aiohttp.tracing import Trace
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict
from yarl import URL

from sidecar.config import Settings
from sidecar.errors import UpstreamTimeout, UpstreamUnavailable
from sidecar.metrics import Metrics
from sidecar.upstream import Clock, Upstream, default_session

ORIGIN = "http://127.0.0.1:9200"


class Unreachable(aiohttp.BaseConnector):
    """Connects nowhere. Each attempt records the URL it was asked for, takes ``delay`` seconds and is refused;
    from attempt ``hang_from`` on, the connect never completes (a black-holed SYN)."""

    def __init__(self, *, delay: float = 0.0, hang_from: int | None = None) -> None:
        super().__init__()
        self.delay = delay
        self.hang_from = hang_from
        self.urls: list[URL] = []
        self.started: list[float] = []

    async def _create_connection(
        self, req: aiohttp.ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        self.urls.append(req.url)
        self.started.append(time.monotonic())
        if self.hang_from is not None and len(self.urls) >= self.hang_from:
            await asyncio.sleep(3600)
        await asyncio.sleep(self.delay)
        raise aiohttp.ClientConnectorError(req.connection_key, ConnectionRefusedError(111, "Connection refused"))


class RefusesFirst(aiohttp.TCPConnector):
    """A real TCP pool whose first ``n`` connects are refused."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.attempts = 0

    async def _create_connection(
        self, req: aiohttp.ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        self.attempts += 1
        if self.attempts <= self.n:
            raise aiohttp.ClientConnectorError(req.connection_key, ConnectionRefusedError(111, "Connection refused"))
        return await super()._create_connection(req, traces, timeout)


class RefusesPort(aiohttp.TCPConnector):
    """A real TCP pool that refuses every connect to ``port`` (a node that is down) and counts connects by port."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.attempts: dict[int | None, int] = {}

    async def _create_connection(
        self, req: aiohttp.ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        self.attempts[req.url.port] = self.attempts.get(req.url.port, 0) + 1
        if req.url.port == self.port:
            raise aiohttp.ClientConnectorError(req.connection_key, ConnectionRefusedError(111, "Connection refused"))
        return await super()._create_connection(req, traces, timeout)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


MakeUpstream = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def make_upstream() -> AsyncIterator[MakeUpstream]:
    started: list[Upstream] = []

    async def make(
        connector: aiohttp.BaseConnector | None = None,
        upstream: str = ORIGIN,
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        **kw: Any,
    ) -> Upstream:
        settings = Settings(upstream=upstream, **kw)
        up = Upstream(
            settings,
            session_factory=None if connector is None else lambda: default_session(settings, connector=connector),
            metrics=metrics,
            **({} if clock is None else {"clock": clock}),
        )
        await up.start()
        started.append(up)
        return up

    yield make
    for up in started:
        await up.close()


async def _status(up: Upstream, method: str, path: str, *, retry: bool, body: bytes | None = None) -> int:
    async with up.request(method, path, CIMultiDict(), body, retry=retry) as resp:
        await resp.read()
        return resp.status


# --- errors -------------------------------------------------------------------------------------------------------


async def test_a_refused_connection_is_502_and_a_write_is_tried_once(make_upstream: MakeUpstream) -> None:
    connector = Unreachable()
    up = await make_upstream(connector, retry_deadline_s=5)
    with pytest.raises(UpstreamUnavailable) as info:
        await _status(up, "POST", "/docs/_doc", retry=False, body=b'{"a":1}')
    assert info.value.status == 502 and isinstance(info.value.__cause__, aiohttp.ClientConnectorError)
    assert len(connector.urls) == 1


async def test_a_connect_that_hangs_is_502_after_the_connect_timeout(make_upstream: MakeUpstream) -> None:
    connector = Unreachable(hang_from=1)
    up = await make_upstream(connector, connect_timeout_s=0.2)
    t0 = time.monotonic()
    with pytest.raises(UpstreamUnavailable):
        await _status(up, "PUT", "/docs", retry=False)
    assert time.monotonic() - t0 < 2 and len(connector.urls) == 1


async def test_a_read_is_retried_until_the_deadline(make_upstream: MakeUpstream) -> None:
    connector = Unreachable()
    up = await make_upstream(connector, retry_deadline_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(UpstreamUnavailable):
        await _status(up, "GET", "/docs/_search", retry=True)
    assert len(connector.urls) >= 2
    assert time.monotonic() - t0 < 0.3 + 0.5


async def test_deadline_zero_means_a_single_attempt(make_upstream: MakeUpstream) -> None:
    connector = Unreachable()
    up = await make_upstream(connector, retry_deadline_s=0)
    with pytest.raises(UpstreamUnavailable):
        await _status(up, "GET", "/", retry=True)
    assert len(connector.urls) == 1


async def test_the_deadline_holds_when_each_attempt_is_slow(make_upstream: MakeUpstream) -> None:
    """Each refusal takes 0.4 s. With the deadline counted from the first attempt and no attempt started after it,
    a 0.5 s deadline ends by ~0.9 s at worst. stop_after_delay (or a clock started after the first failure) starts a
    third attempt at ~0.8 s and ends past 1.2 s."""
    connector = Unreachable(delay=0.4)
    up = await make_upstream(connector, retry_deadline_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(UpstreamUnavailable):
        await _status(up, "GET", "/docs/_search", retry=True)
    assert time.monotonic() - t0 < 0.5 + 0.5
    assert all(started - t0 < 0.5 for started in connector.started)  # no attempt began after the deadline


async def test_a_retry_that_hangs_on_connect_is_cut_at_the_deadline(make_upstream: MakeUpstream) -> None:
    """The first connect is refused at once, the retry hangs: without a cut it would run the whole 5 s connect
    timeout past a 0.5 s deadline."""
    connector = Unreachable(hang_from=2)
    up = await make_upstream(connector, retry_deadline_s=0.5, connect_timeout_s=5)
    t0 = time.monotonic()
    with pytest.raises(UpstreamUnavailable):
        await _status(up, "GET", "/docs/_search", retry=True)
    assert time.monotonic() - t0 < 0.5 + 0.5
    assert len(connector.urls) >= 2


# --- the host is always ours --------------------------------------------------------------------------------------

_HOSTILE = [
    "//evil.example/x",
    "http://evil.example/",
    "https://evil.example:443/latest/meta-data",
    "@evil.example/x",
    "evil.example/x",
    "/..//evil.example",
    "\\\\evil.example\\x",
    "/%2F%2Fevil.example",
    ":80/x",
    "?q=1",
    "",
]


@pytest.mark.parametrize("path", _HOSTILE)
async def test_the_connection_is_always_to_the_configured_origin(make_upstream: MakeUpstream, path: str) -> None:
    connector = Unreachable()
    up = await make_upstream(connector, upstream="http://127.0.0.1:9200/")
    with pytest.raises(UpstreamUnavailable):
        await _status(up, "GET", path, retry=False)
    (url,) = connector.urls
    assert (url.scheme, url.host, url.port) == ("http", "127.0.0.1", 9200)
    assert url.raw_path.startswith("/")


_TLS_UPSTREAM = Upstream(Settings(upstream="https://engine.internal:9243"))


@given(st.text(max_size=30))
def test_property_url_keeps_the_origin_whatever_the_path(path: str) -> None:
    up = _TLS_UPSTREAM
    url = up.url(path)
    assert (url.scheme, url.host, url.port) == ("https", "engine.internal", 9243)
    assert up.host_header == "engine.internal:9243"


# --- a real reply -------------------------------------------------------------------------------------------------


class Engine:
    """An in-process engine on loopback that records what it was sent."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        self.hosts: list[str | None] = []
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.server = TestServer(app)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.raw_path, request.headers.get("X-Opaque-Id")))
        self.hosts.append(request.headers.get("Host"))
        if request.path == "/busy":
            return web.json_response({"error": "busy"}, status=503)
        if request.path == "/stall":
            await self.release.wait()
        if request.path == "/html":
            return web.Response(text="<html>not an engine</html>", content_type="text/html")
        return web.json_response({"path": request.raw_path}, headers={"X-Elastic-Product": "Elasticsearch"})


@pytest.fixture
async def make_engine() -> AsyncIterator[Callable[[], Awaitable[Engine]]]:
    started: list[Engine] = []

    async def make() -> Engine:
        e = Engine()
        await e.server.start_server()
        started.append(e)
        return e

    yield make
    for e in started:
        e.release.set()
        await e.server.close()


@pytest.fixture
async def engine(make_engine: Callable[[], Awaitable[Engine]]) -> Engine:
    return await make_engine()


async def test_a_reply_comes_back_as_the_engine_sent_it(make_upstream: MakeUpstream, engine: Engine) -> None:
    up = await make_upstream(aiohttp.TCPConnector(), upstream=str(engine.server.make_url("/")))
    headers = CIMultiDict({"X-Opaque-Id": "r1", "Host": up.host_header})
    async with up.request("GET", "/docs/_search?q=a%20b&q=c", headers, None, retry=False) as resp:
        assert resp.status == 200 and resp.headers["X-Elastic-Product"] == "Elasticsearch"
        assert await resp.json() == {"path": "/docs/_search?q=a%20b&q=c"}
    assert engine.seen == [("GET", "/docs/_search?q=a%20b&q=c", "r1")]


async def test_a_refused_read_is_retried_and_then_answered(make_upstream: MakeUpstream, engine: Engine) -> None:
    connector = RefusesFirst(2)
    up = await make_upstream(connector, upstream=str(engine.server.make_url("/")), retry_deadline_s=5)
    assert await _status(up, "POST", "/docs/_search", retry=True, body=b"{}") == 200
    assert connector.attempts == 3 and len(engine.seen) == 1


async def test_a_stalled_reply_is_504_and_is_not_retried(make_upstream: MakeUpstream, engine: Engine) -> None:
    up = await make_upstream(
        aiohttp.TCPConnector(), upstream=str(engine.server.make_url("/")), upstream_timeout_s=0.2, retry_deadline_s=5
    )
    t0 = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        await _status(up, "GET", "/stall", retry=True)
    assert info.value.status == 504 and time.monotonic() - t0 < 2
    assert len(engine.seen) == 1  # the engine may be working on it: asking again could double the load


async def test_json_for_our_own_requests(make_upstream: MakeUpstream, engine: Engine) -> None:
    up = await make_upstream(aiohttp.TCPConnector(), upstream=str(engine.server.make_url("/")))
    assert await up.json("GET", "/") == (200, {"path": "/"})
    with pytest.raises(UpstreamUnavailable):  # something that is not an engine answers
        await up.json("GET", "/html")
    down = await make_upstream(Unreachable())
    with pytest.raises(UpstreamUnavailable):
        await down.json("GET", "/")


async def _raw_server(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> Any:
    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await reader.read(65536)
        if not chunk:
            return b""
        data += chunk
    return data.split(b"\r\n", 1)[0]


async def test_a_reply_that_is_not_http_is_502(make_upstream: MakeUpstream) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"\x15\x03\x03 this is the transport port, not HTTP\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await _raw_server(garbage)
    port = server.sockets[0].getsockname()[1]
    try:
        up = await make_upstream(aiohttp.TCPConnector(), upstream=f"http://127.0.0.1:{port}")
        with pytest.raises(UpstreamUnavailable):
            await _status(up, "POST", "/docs/_doc", retry=False, body=b"{}")
    finally:
        server.close()


async def test_a_write_on_a_kept_alive_connection_that_drops_is_sent_once(make_upstream: MakeUpstream) -> None:
    """The engine answers one request, then reads the next and drops the connection. aiohttp by itself resends
    GET/PUT/DELETE once in that case; a write would then happen twice."""
    seen: list[bytes] = []

    async def drop_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        while line := await _read_head(reader):
            seen.append(line)
            if not first:
                break
            first = False
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}")
            await writer.drain()
        writer.close()

    server = await _raw_server(drop_second)
    port = server.sockets[0].getsockname()[1]
    try:
        up = await make_upstream(aiohttp.TCPConnector(), upstream=f"http://127.0.0.1:{port}")
        assert await _status(up, "GET", "/", retry=False) == 200
        with pytest.raises(UpstreamUnavailable):
            await _status(up, "DELETE", "/docs/_doc/1", retry=False)
        await asyncio.sleep(0.05)
        assert seen == [b"GET / HTTP/1.1", b"DELETE /docs/_doc/1 HTTP/1.1"]
    finally:
        server.close()


async def test_the_default_session_reaches_a_real_socket(make_upstream: MakeUpstream) -> None:
    server = await _raw_server(lambda r, w: asyncio.sleep(0))
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens there now: a refused connection, on loopback
    up = await make_upstream(upstream=f"http://127.0.0.1:{port}", retry_deadline_s=0)
    with pytest.raises(UpstreamUnavailable):
        await _status(up, "GET", "/", retry=True)


# --- several nodes ------------------------------------------------------------------------------------------------

MakeEngine = Callable[[], Awaitable[Engine]]


def _origin(e: Engine) -> str:
    return str(e.server.make_url("/"))


def _nodes(*origins: str) -> str:
    return ",".join(origins)


async def test_requests_spread_over_the_nodes_each_with_its_own_host(
    make_upstream: MakeUpstream, make_engine: MakeEngine
) -> None:
    one, two = await make_engine(), await make_engine()
    up = await make_upstream(aiohttp.TCPConnector(), upstream=_nodes(_origin(one), _origin(two)))
    headers = CIMultiDict({"Host": up.host_header})  # what the forwarder builds: the first node's authority
    for retry in (False, True, False, True):
        async with up.request("GET", "/docs/_search", headers, None, retry=retry) as resp:
            assert resp.status == 200
    assert len(one.seen) == len(two.seen) == 2
    assert one.hosts == [one.server.make_url("/").raw_authority] * 2
    assert two.hosts == [two.server.make_url("/").raw_authority] * 2
    assert headers["Host"] == up.host_header  # the caller's headers are left as they were


async def test_a_read_refused_by_one_node_is_answered_by_another(make_upstream: MakeUpstream, engine: Engine) -> None:
    """The first node is down: the read goes on to the live one at once, and later requests skip the dead one."""
    connector = RefusesPort(9)
    up = await make_upstream(connector, upstream=_nodes("http://127.0.0.1:9", _origin(engine)), retry_deadline_s=5)
    assert await _status(up, "POST", "/docs/_search", retry=True, body=b"{}") == 200
    for _ in range(4):
        assert await _status(up, "GET", "/docs/_doc/1", retry=False) == 200  # not even a write-safe try on node 1
    assert connector.attempts[9] == 1 and len(engine.seen) == 5


async def test_a_write_refused_by_its_node_is_not_sent_to_another(make_upstream: MakeUpstream, engine: Engine) -> None:
    connector = RefusesPort(9)
    up = await make_upstream(connector, upstream=_nodes("http://127.0.0.1:9", _origin(engine)), retry_deadline_s=5)
    with pytest.raises(UpstreamUnavailable):
        await _status(up, "POST", "/docs/_doc", retry=False, body=b'{"a":1}')
    assert connector.attempts == {9: 1} and engine.seen == []


async def test_a_5xx_is_the_engines_answer_and_the_node_stays_live(
    make_upstream: MakeUpstream, make_engine: MakeEngine
) -> None:
    one, two = await make_engine(), await make_engine()
    metrics = Metrics()
    up = await make_upstream(
        aiohttp.TCPConnector(), upstream=_nodes(_origin(one), _origin(two)), retry_deadline_s=5, metrics=metrics
    )
    assert [await _status(up, "GET", "/busy", retry=True) for _ in range(4)] == [503] * 4  # as the engine said it
    assert len(one.seen) == len(two.seen) == 2  # not retried, and neither node put to rest
    assert metrics.registry.get_sample_value("sidecar_upstream_node_up", {"node": up.nodes[0].name}) == 1


async def test_a_timeout_rests_the_node_until_its_backoff_ends(
    make_upstream: MakeUpstream, make_engine: MakeEngine
) -> None:
    one, two = await make_engine(), await make_engine()
    clock, metrics = FakeClock(), Metrics()
    up = await make_upstream(
        aiohttp.TCPConnector(),
        upstream=_nodes(_origin(one), _origin(two)),
        upstream_timeout_s=0.2,
        retry_deadline_s=5,
        upstream_dead_backoff_s=2,
        clock=clock,
        metrics=metrics,
    )
    with pytest.raises(UpstreamTimeout):
        await _status(up, "GET", "/stall", retry=True)
    assert len(one.seen) == 1 and two.seen == []  # a stalled read is not retried, on any node
    up_one = {"node": up.nodes[0].name}
    assert metrics.registry.get_sample_value("sidecar_upstream_node_up", up_one) == 0
    for _ in range(3):
        assert await _status(up, "GET", "/", retry=False) == 200
    assert len(one.seen) == 1 and len(two.seen) == 3  # node one rests
    clock.now += 2
    for _ in range(2):
        assert await _status(up, "GET", "/", retry=False) == 200
    assert len(one.seen) == 2 and len(two.seen) == 4  # its backoff is over: it takes its turn again
    assert metrics.registry.get_sample_value("sidecar_upstream_node_up", up_one) == 1


async def test_every_node_down_tries_the_first_to_wake_within_the_deadline(make_upstream: MakeUpstream) -> None:
    connector = Unreachable()
    nodes = _nodes("http://10.0.0.1:9200", "http://10.0.0.2:9200", "http://10.0.0.3:9200")
    up = await make_upstream(connector, upstream=nodes, retry_deadline_s=0.3)
    with pytest.raises(UpstreamUnavailable):
        await _status(up, "GET", "/docs/_search", retry=True)
    hosts = [str(u.host) for u in connector.urls]
    assert sorted(hosts[:3]) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]  # each node once, at once
    assert len(hosts) > 3 and set(hosts[3:]) == {"10.0.0.1"}  # then the first to wake (none did in 0.3 s)
    # A write now goes to one of them, once, rather than failing unsent.
    with pytest.raises(UpstreamUnavailable):
        await _status(up, "PUT", "/docs", retry=False)
    assert len(connector.urls) == len(hosts) + 1


async def test_readiness_asks_another_node_and_an_events_bulk_does_not(
    make_upstream: MakeUpstream, engine: Engine
) -> None:
    nodes = _nodes("http://127.0.0.1:9", _origin(engine))
    up = await make_upstream(RefusesPort(9), upstream=nodes)
    assert await up.json("GET", "/", timeout=2) == (200, {"path": "/"})
    assert engine.hosts == [engine.server.make_url("/").raw_authority]
    writer = await make_upstream(RefusesPort(9), upstream=nodes)
    with pytest.raises(UpstreamUnavailable):
        await writer.json("POST", "/_bulk", ndjson=b'{"index":{"_index":"ev"}}\n{}\n')
    assert len(engine.seen) == 1
