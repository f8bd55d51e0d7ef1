"""Upstream: errors translated where aiohttp is touched, reads retried under a real deadline, writes never, and
every request goes to the configured origin.

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
from sidecar.upstream import Upstream, default_session

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


MakeUpstream = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def make_upstream() -> AsyncIterator[MakeUpstream]:
    started: list[Upstream] = []

    async def make(connector: aiohttp.BaseConnector | None = None, upstream: str = ORIGIN, **kw: Any) -> Upstream:
        settings = Settings(upstream=upstream, **kw)
        up = Upstream(
            settings,
            session_factory=None if connector is None else lambda: default_session(settings, connector=connector),
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
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.server = TestServer(app)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.raw_path, request.headers.get("X-Opaque-Id")))
        if request.path == "/stall":
            await self.release.wait()
        if request.path == "/html":
            return web.Response(text="<html>not an engine</html>", content_type="text/html")
        return web.json_response({"path": request.raw_path}, headers={"X-Elastic-Product": "Elasticsearch"})


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    e = Engine()
    await e.server.start_server()
    yield e
    e.release.set()
    await e.server.close()


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
