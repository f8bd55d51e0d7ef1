"""The one middleware: errors to the engine's format, then the access line and the metrics, from the outcome."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from sidecar.errors import BadRequest, PayloadTooLarge, SidecarError
from sidecar.http.keys import ACCESS_LOG, METRICS, OUTCOME, ROUTE

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(err: SidecarError) -> web.Response:
    return web.json_response(err.body(), status=err.status, headers=err.headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The single translation from errors to the engine's error format; no traceback ever leaves."""
    start = time.perf_counter()
    metrics = request.app[METRICS]
    metrics.request_started()
    try:
        response = await handler(request)
    except SidecarError as e:
        response = error_response(e)
    except web.HTTPException as e:  # aiohttp's own: a body over client_max_size, a bad method...
        error = PayloadTooLarge(e.reason) if e.status == 413 else BadRequest(e.reason)
        error.status = e.status
        response = error_response(error)
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        response = error_response(SidecarError("internal error in the rerank sidecar; see its log"))
    finally:
        metrics.request_ended()
    route = "sidecar" if request.path.startswith("/_sidecar/") else request.get(ROUTE, "proxy")
    metrics.count_request(route, response.status)
    outcome = request.get(OUTCOME)
    if outcome is not None:
        metrics.record(outcome)
    request.app[ACCESS_LOG](
        request.method,
        request.path,
        response.status,
        (time.perf_counter() - start) * 1000,
        outcome.log_field() if outcome is not None else "-",
    )
    return response
