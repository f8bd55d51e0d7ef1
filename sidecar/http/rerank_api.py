"""The rerank API's handlers: Cohere's v2 shape at /_sidecar/v2/rerank, TEI's at /_sidecar/rerank.

Each checks access, reads the body (``max_search_body_bytes``, gzip inflated within it) and hands it to
``sidecar.rerank.api``; every error leaves as an ``ApiError`` in that API's own shape, through the middleware.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from sidecar.encoding import decode
from sidecar.errors import PayloadTooLarge
from sidecar.http.keys import PIPELINE, SETTINGS
from sidecar.rerank import api
from sidecar.rerank.api import ApiError, ErrorShape

COHERE_PATH = "/_sidecar/v2/rerank"
TEI_PATH = "/_sidecar/rerank"


async def cohere_rerank(request: web.Request) -> web.Response:
    body = await _open(request, api.cohere_error)
    return web.json_response(await api.cohere_rerank(request.app[PIPELINE], request.app[SETTINGS], body))


async def tei_rerank(request: web.Request) -> web.Response:
    body = await _open(request, api.tei_error)
    return web.json_response(await api.tei_rerank(request.app[PIPELINE], request.app[SETTINGS], body))


async def _open(request: web.Request, error: ErrorShape) -> bytes:
    """The body of a caller who may use the API (else its 401 or 403), decoded, within the body limit."""
    authorization = [value for name, value in request.raw_headers if name.lower() == b"authorization"]
    refused = api.refusal(request.remote, authorization, request.app[SETTINGS].rerank_api_keys)
    if refused is not None:
        status, message = refused
        denied = error(status, message, "unauthorized" if status == 401 else "forbidden")
        if status == 401:
            denied.headers["WWW-Authenticate"] = "Bearer"
        raise denied
    limit = request.app[SETTINGS].max_search_body_bytes
    try:
        raw = await request.read()  # the app's client_max_size is the same limit
        body = decode(raw, request.headers.get("Content-Encoding"), limit=limit)
    except (web.HTTPRequestEntityTooLarge, PayloadTooLarge) as e:
        raise error(413, f"the body is over the limit of {limit} bytes (max_search_body_bytes)", "validation") from e
    if body is None:
        raise error(400, "the body's Content-Encoding is not one the sidecar reads (identity, gzip)", "validation")
    return body


def _not_allowed(error: ErrorShape) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        raise _allow_post(error(405, f"{request.method} is not allowed here; the rerank API takes POST", "validation"))

    return handler


def _allow_post(e: ApiError) -> ApiError:
    e.headers["Allow"] = "POST"
    return e


def add_routes(app: web.Application) -> None:
    """Before the catch-all route: another method on these paths is the API's 405, never the engine's."""
    routes: list[tuple[str, Any, ErrorShape]] = [
        (COHERE_PATH, cohere_rerank, api.cohere_error),
        (TEI_PATH, tei_rerank, api.tei_error),
    ]
    for path, handler, error in routes:
        app.router.add_post(path, handler)
        app.router.add_route("*", path, _not_allowed(error))
