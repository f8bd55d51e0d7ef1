"""Pass-through: forward a request to the engine and stream the reply back unchanged."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from .headers import client_response_headers, compat_version, upstream_request_headers
from .keys import SETTINGS, UPSTREAM
from .upstream import Body

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024
# POST endpoints that only read: safe to replay when the connection could not be made.
_READ_ENDPOINTS = frozenset({"_search", "_msearch", "_count", "_mget", "_field_caps", "_validate", "_explain"})


def is_retryable(method: str, path: str) -> bool:
    """Idempotent reads only. Scroll pages and every write are never replayed."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return "/scroll" not in path
    if method == "POST":
        parts = [p for p in path.split("/") if p]
        return any(p in _READ_ENDPOINTS for p in parts[-2:]) and "scroll" not in parts
    return False


def upstream_headers(request: web.Request) -> aiohttp.typedefs.LooseHeaders:
    settings = request.app[SETTINGS]
    return upstream_request_headers(
        request.headers,
        host=request.app[UPSTREAM].host_header,
        client_ip=request.remote,
        scheme=request.scheme,
        compat=settings.compat_media_types,
    )


def reply_compat_version(request: web.Request) -> str | None:
    """With the compat setting, the vendor version to restore on the reply's Content-Type."""
    if not request.app[SETTINGS].compat_media_types:
        return None
    return compat_version(request.headers.get("Accept")) or compat_version(request.headers.get("Content-Type"))


async def request_body(request: web.Request, limit: int) -> tuple[Body, bool]:
    """The body to send and whether the request may be retried (needs a replayable body)."""
    retry = is_retryable(request.method, request.path)
    if not request.body_exists:
        return None, retry
    length = request.content_length
    if retry and length is not None and length <= limit:
        return await request.read(), True
    return request.content, False


async def forward(request: web.Request, body: Body | None = None, *, buffered: bool = False) -> web.StreamResponse:
    """Send the request upstream (its own body, or ``body`` already read) and stream the reply."""
    settings = request.app[SETTINGS]
    if buffered:
        retry = is_retryable(request.method, request.path)
    else:
        body, retry = await request_body(request, settings.max_search_body_bytes)
    headers = upstream_headers(request)
    async with request.app[UPSTREAM].request(
        request.method, request.raw_path, headers, body, retry=retry
    ) as resp:
        out = web.StreamResponse(
            status=resp.status,
            reason=resp.reason,
            headers=client_response_headers(resp.headers, compat_accept=reply_compat_version(request)),
        )
        await out.prepare(request)
        try:
            async for chunk in resp.content.iter_chunked(_CHUNK):
                await out.write(chunk)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            # The status is already sent: never turn a half-received reply into a different one.
            # Cutting the connection makes the client see a truncated body, as it would from the engine.
            log.warning("upstream broke off mid-reply on %s %s: %s", request.method, request.path, type(e).__name__)
            if request.transport is not None:
                request.transport.close()
            return out
        await out.write_eof()
        return out
