"""Pass-through: forward a request to the engine and stream the reply back unchanged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from sidecar.config import Settings
from sidecar.errors import UpstreamUnavailable
from sidecar.headers import client_response_headers, compat_version, upstream_request_headers
from sidecar.upstream import Body, Upstream, is_retryable

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024
_SMALL_REPLY = 256 * 1024


class Forwarder:
    """Created once at start-up: the header rules and the upstream for every request that is not reranked."""

    def __init__(self, settings: Settings, upstream: Upstream) -> None:
        self._settings = settings
        self._upstream = upstream
        self._writes: set[asyncio.Task[web.StreamResponse]] = set()  # under way, run to their end

    def upstream_headers(self, request: web.Request) -> CIMultiDict[str]:
        return upstream_request_headers(
            request.headers,
            host=self._upstream.host_header,
            client_ip=request.remote,
            scheme=request.scheme,
            compat=self._settings.compat_media_types,
        )

    def reply_compat(self, request: web.Request) -> str | None:
        """With the compat setting, the vendor version to restore on the reply's Content-Type."""
        if not self._settings.compat_media_types:
            return None
        return compat_version(request.headers.get("Accept")) or compat_version(request.headers.get("Content-Type"))

    async def forward(
        self,
        request: web.Request,
        body: bytes | None = None,
        *,
        rewritten: bool = False,
        extra_headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        """Send the request upstream and stream the reply back.

        The body is the request's own, streamed; or ``body`` when the caller already read it, and replaced it
        with its own bytes (``rewritten``: uncompressed JSON of a new length).

        A write (anything not safe to replay) runs to its end even if its client goes away: aiohttp then cancels
        the handler, and a read is dropped with it, but the engine gets a write whole or not at all from us.
        """
        replayable = is_retryable(request.method, request.path)
        exchange = self._exchange(request, body, replayable, rewritten=rewritten, extra_headers=extra_headers)
        if replayable:
            return await exchange
        return await self._to_the_end(exchange)

    async def close(self) -> None:
        """Give writes whose clients went away the shutdown grace to finish."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=self._settings.shutdown_grace_s)

    async def _to_the_end(self, exchange: Coroutine[Any, Any, web.StreamResponse]) -> web.StreamResponse:
        task = asyncio.ensure_future(exchange)
        self._writes.add(task)
        task.add_done_callback(self._written)
        return await asyncio.shield(task)  # cancelled: the handler's await ends, the task goes on

    def _written(self, task: asyncio.Task[web.StreamResponse]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:  # retrieved here too: its client may be gone
            log.debug("write ended with %s", type(task.exception()).__name__)

    async def _exchange(
        self,
        request: web.Request,
        body: bytes | None,
        replayable: bool,
        *,
        rewritten: bool,
        extra_headers: dict[str, str] | None,
    ) -> web.StreamResponse:
        send: Body
        if body is not None:
            send, retry = body, replayable
        else:
            send, retry = await self._request_body(request, replayable)
        headers = self.upstream_headers(request)
        if rewritten:
            headers.popall("Content-Encoding", None)
            headers["Content-Length"] = str(len(body or b""))
            headers.setdefault("Content-Type", "application/json")
        resp = await self._upstream.send(request.method, request.raw_path, headers, send, retry=retry)
        try:
            reply_headers = client_response_headers(resp.headers, compat_accept=self.reply_compat(request))
            reply_headers.update(extra_headers or {})
            if resp.content_length is not None and resp.content_length <= _SMALL_REPLY:
                # One write for headers and body: most searches and cluster calls are small.
                data = await _read_small(request, resp)
                return web.Response(status=resp.status, reason=resp.reason, headers=reply_headers, body=data)
            out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=reply_headers)
            await out.prepare(request)
            try:
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    await out.write(chunk)
            except (TimeoutError, aiohttp.ClientError) as e:
                if request.transport is None or request.transport.is_closing():
                    return out  # the client went away (a write that ran to its end without it)
                # The status is already sent: never turn a half-received reply into a different one.
                # Cutting the connection makes the client see a truncated body, as it would from the engine.
                log.warning("upstream broke off mid-reply on %s %s: %s", request.method, request.path, type(e).__name__)
                if request.transport is not None:
                    request.transport.close()
                return out
            await out.write_eof()
            return out
        finally:
            resp.release()

    async def _request_body(self, request: web.Request, replayable: bool) -> tuple[Body, bool]:
        """The body to send and whether the request may be retried (needs a replayable body)."""
        if not request.body_exists:
            return None, replayable
        length = request.content_length
        if replayable and length is not None and length <= self._settings.max_search_body_bytes:
            return await request.read(), True
        return request.content, False


async def _read_small(request: web.Request, resp: aiohttp.ClientResponse) -> bytes:
    """The whole of a small reply; if the engine breaks off, the client gets a 502, never a shortened body."""
    try:
        return await resp.read()
    except (TimeoutError, aiohttp.ClientError) as e:
        log.warning("upstream broke off mid-reply on %s %s: %s", request.method, request.path, type(e).__name__)
        raise UpstreamUnavailable(f"the upstream engine broke off its reply: {type(e).__name__}") from e
