"""The HTTP server in front of the app: aiohttp's, with the limits a listener open to careless clients needs.

The one place that builds it, for ``serve``, the demo and the tests. At each limit (all in the settings):

- ``header_timeout_s``: a request line and headers not complete that long after the connection opened (or after
  the first byte of a later request on it): the connection is closed without a reply, as the engine does.
- ``body_timeout_s``: no byte of a request body for that long while the sidecar reads it (a pause the sidecar
  makes itself, by flow control towards a slow upstream, does not count): the connection is closed and the
  request abandoned.
- ``keepalive_timeout_s``: an idle kept-alive connection is closed (aiohttp's own keep-alive timer).
- ``max_connections``: a connection over it is closed as soon as it is accepted, before anything is read; the
  open ones are served as before.

Each closing counts in ``sidecar_connections_closed{reason}``. Besides: a handler is cancelled when its client
goes away (``handler_cancellation``: abandoned reranks leave the model's queue; the forwarder shields writes),
an HTTP/0.9 request (no version on its request line) is refused with 400 as soon as its line is in (as the
engine does), errors the server answers itself are in the engine's format, and no reply of ours announces a
``Server`` (a pass-through carries the engine's headers).

Built on aiohttp 3.14's extension points (``AppRunner._make_server``, a ``Server`` whose ``__call__`` makes the
connection, a ``RequestHandler`` subclass); the connection also reads the parser's progress from its base's
``_request_count`` and ``_messages``: aiohttp has no public hook for "headers complete".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from ssl import SSLContext
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion10
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from sidecar.config import Settings
from sidecar.errors import BadRequest, SidecarError
from sidecar.http.keys import METRICS

log = logging.getLogger(__name__)

# Request bodies reach the engine as the client sent them (the server never inflates one); long headers pass.
_SERVER_ARGS: dict[str, Any] = {"auto_decompress": False, "max_field_size": 65536, "access_log": None}

OnClose = Callable[[str], None]


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(settings.header_timeout_s, settings.body_timeout_s, settings.max_connections)


def build_runner(
    app: web.Application, settings: Settings, *, handle_signals: bool = False, shutdown_timeout: float | None = None
) -> web.AppRunner:
    """The runner of ``app`` with the limits of ``settings``; ``setup()`` it, then start a ``web.TCPSite`` on it."""
    app.on_response_prepare.append(_no_server_header)
    metrics = app[METRICS]
    return _Runner(
        app,
        ConnectionLimits.from_settings(settings),
        lambda reason: metrics.connections_closed.labels(reason).inc(),
        handle_signals=handle_signals,
        shutdown_timeout=settings.shutdown_grace_s if shutdown_timeout is None else shutdown_timeout,
        keepalive_timeout=settings.keepalive_timeout_s,
        **_SERVER_ARGS,
    )


def serve_forever(
    app: web.Application,
    settings: Settings,
    *,
    loop: asyncio.AbstractEventLoop,
    ssl_context: SSLContext | None,
    on_hangup: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """``web.run_app`` for our runner: serve on ``settings.listen`` until SIGINT or SIGTERM, then give in-flight
    requests ``shutdown_grace_s`` to finish; ``on_hangup`` runs on each SIGHUP. An error in start-up (a model that
    does not load) propagates."""
    hangups: set[asyncio.Task[None]] = set()

    def hangup() -> None:
        assert on_hangup is not None
        task = loop.create_task(on_hangup())
        hangups.add(task)
        task.add_done_callback(hangups.discard)

    async def main() -> None:
        runner = build_runner(app, settings, handle_signals=True)
        await runner.setup()
        if on_hangup is not None:
            loop.add_signal_handler(signal.SIGHUP, hangup)
        try:
            await web.TCPSite(runner, settings.listen_host, settings.listen_port, ssl_context=ssl_context).start()
            await asyncio.Event().wait()  # SIGINT/SIGTERM raise GracefulExit out of run_until_complete
        finally:
            await runner.cleanup()

    asyncio.set_event_loop(loop)
    task = loop.create_task(main())
    try:
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(task)
        finally:
            rest = asyncio.all_tasks(loop)
            for t in rest:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


async def _no_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp adds ``Server: Python/x aiohttp/y`` to every reply: the engine sends none, and we announce nothing."""
    if response.headers.get(hdrs.SERVER) == SERVER_SOFTWARE:
        del response.headers[hdrs.SERVER]


class _Bare(web.Response):
    """A reply of the server itself, outside the app (whose signal removes the header from the app's replies)."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        if self.headers.get(hdrs.SERVER) == SERVER_SOFTWARE:
            del self.headers[hdrs.SERVER]


def _error_reply(error: SidecarError) -> web.Response:
    reply = _Bare(status=error.status, body=json.dumps(error.body()).encode(), content_type="application/json")
    reply.force_close()
    return reply


class _Runner(web.AppRunner):
    def __init__(self, app: web.Application, limits: ConnectionLimits, on_close: OnClose, **kwargs: Any) -> None:
        super().__init__(app, handler_cancellation=True, **kwargs)
        self._limits = limits
        self._on_close = on_close
        self._server_kwargs = {k: v for k, v in kwargs.items() if k not in ("handle_signals", "shutdown_timeout")}

    async def _make_server(self) -> web.Server:
        app_server = await super()._make_server()  # starts the app; its handler and request factory are ours
        return _Server(
            app_server.request_handler,
            request_factory=app_server.request_factory,
            handler_cancellation=True,
            limits=self._limits,
            on_close=self._on_close,
            **self._server_kwargs,
        )


class _Server(web.Server):
    """aiohttp's server with our connection class and the connection limit; its handler refuses an HTTP/0.9
    message that the connection's own check did not see first (pipelined behind a body)."""

    def __init__(self, handler: Any, *, limits: ConnectionLimits, on_close: OnClose, **kwargs: Any) -> None:
        self._app_handler = handler
        own = ("request_factory", "handler_cancellation", "loop")
        super().__init__(self._refuse_http09, **{k: v for k, v in kwargs.items() if k in own})
        self._connection_kwargs = {k: v for k, v in kwargs.items() if k not in own}
        self.limits = limits
        self.on_close = on_close

    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=asyncio.get_running_loop(), **self._connection_kwargs)

    async def _refuse_http09(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.version < HttpVersion10:
            return _error_reply(BadRequest("a request line needs an HTTP version (HTTP/1.0 or HTTP/1.1)"))
        response: web.StreamResponse = await self._app_handler(request)
        return response


class _Connection(RequestHandler):
    """One client connection: aiohttp's handler plus the header and body timers and the connection limit.

    The parser's progress is read after each ``data_received``: a rise of aiohttp's request count means a
    request's headers are complete (its body, if any, is then the last queued message's payload)."""

    __slots__ = ("_body", "_line", "_paused", "_server", "_timer")

    def __init__(self, server: _Server, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._server = server
        self._timer: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None  # a body being received
        self._paused = False  # reading paused by flow control: the wait is ours, not the client's
        self._line: bytearray | None = None  # the request line so far, until it is whole and checked

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        over = len(self._server.connections) >= self._server.limits.max_connections
        super().connection_made(transport)
        if over:
            log.debug("connection over max_connections=%s closed", self._server.limits.max_connections)
            self._server.on_close("max_connections")
            self.force_close()
            return
        self._next_request()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._body = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and self._body is None and self._timer is None:  # the first bytes of the next request
            self._next_request()
        if self._line is not None and not self._versioned(data):
            self._refuse("a request line needs an HTTP version (HTTP/1.0 or HTTP/1.1)")
            return
        requests = self._request_count
        super().data_received(data)
        if self._force_close or self._close:
            return
        if self._request_count > requests:  # headers complete; a body may follow
            self._disarm()
            self._line = None
            payload = self._messages[-1][1] if self._messages else None
            self._body = payload if isinstance(payload, StreamReader) and not payload.is_eof() else None
            if self._body is not None:
                self._arm(self._server.limits.body_timeout_s, "body_timeout")
        elif self._body is not None:
            if self._body.is_eof():
                self._body = None
                self._disarm()
            else:
                self._arm(self._server.limits.body_timeout_s, "body_timeout")

    def pause_reading(self) -> None:
        super().pause_reading()
        self._paused = True
        if self._body is not None:
            self._disarm()

    def resume_reading(self, resume_parser: bool = True) -> None:
        super().resume_reading(resume_parser)
        self._paused = False
        if self._body is not None and not self._body.is_eof():
            self._arm(self._server.limits.body_timeout_s, "body_timeout")

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """A request the parser refused (400, 413, 431...) or a handler's escaped error: the engine's format."""
        super().handle_error(request, status, exc, message)  # logs it; raises if a reply was already sent
        if status >= 500:
            error = SidecarError("internal error in the rerank sidecar; see its log")
        else:
            error = BadRequest(message or HTTPStatus(status).phrase)
        error.status = status
        return _error_reply(error)

    def _next_request(self) -> None:
        self._arm(self._server.limits.header_timeout_s, "header_timeout")
        self._line = bytearray()

    def _versioned(self, data: bytes) -> bool:
        """False once the request line is whole and has no HTTP version: an HTTP/0.9 request, which ends at
        its line, so the parser would wait for headers that never come (the engine answers it 400 at once)."""
        assert self._line is not None
        end = data.find(b"\n")
        if end > 0 and not self._line:  # the whole line in one piece, the common case: no copy
            parts = data[:end].rstrip(b"\r").split(b" ")
            if parts[0]:
                self._line = None
                return len(parts) >= 3 and parts[-1].startswith(b"HTTP/")
        self._line += data if end < 0 else data[:end]
        if end < 0:
            if len(self._line) > self.max_line_size:
                self._line = None  # the parser's to refuse
            return True
        line = bytes(self._line).strip(b"\r\n")
        if not line:  # an empty line before a request is allowed (RFC 9112 2.2)
            self._line = bytearray()
            return self._versioned(data[end + 1 :])
        self._line = None
        parts = line.split(b" ")
        return len(parts) >= 3 and parts[-1].startswith(b"HTTP/")

    def _refuse(self, reason: str) -> None:
        """A 400 of our own, written as it is: no request was parsed to answer."""
        error = BadRequest(reason)
        body = json.dumps(error.body()).encode()
        head = (
            f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        self._disarm()
        if self.transport is not None:
            self.transport.write(head.encode() + body)
        self.force_close()  # the transport sends what it holds, then closes

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._timer = self._loop.call_later(seconds, self._expire, reason)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, reason: str) -> None:
        self._timer = None
        if reason == "body_timeout" and (self._body is None or self._body.is_eof() or self._paused):
            return
        log.debug("client connection closed: %s", reason)
        self._server.on_close(reason)
        self.force_close()
