"""Application factory: state on typed keys, cleanup contexts, routes and middleware."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from sidecar.config import Settings
from sidecar.errors import SidecarError
from sidecar.http import admin
from sidecar.http.keys import METRICS, RERANK, RERANK_STATUS, ROUTE, SETTINGS, UPSTREAM
from sidecar.http.search import dispatch
from sidecar.metrics import Metrics
from sidecar.rerank.pipeline import RerankService
from sidecar.rerank.scorers.base import Scorer
from sidecar.upstream import Upstream

log = logging.getLogger(__name__)
access_log = logging.getLogger("sidecar.access")

# The server must not decompress request bodies: a gzip body passes to the engine as the client sent it.
SERVER_ARGS: dict[str, Any] = {"auto_decompress": False, "max_field_size": 65536}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(err: SidecarError) -> web.Response:
    return web.json_response(err.body(), status=err.status, headers=err.headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The single translation from errors to the engine's error format; no traceback ever leaves."""
    start = time.perf_counter()
    try:
        response = await handler(request)
    except SidecarError as e:
        response = error_response(e)
    except web.HTTPException as e:
        response = error_response(_http_error(e))
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        response = error_response(SidecarError("internal error in the rerank sidecar; see its log"))
    route = "sidecar" if request.path.startswith("/_sidecar/") else request.get(ROUTE, "proxy")
    request.app[METRICS].requests.labels(route, str(response.status)).inc()
    access_log.info(
        "%s %s %s %.1fms rerank=%s",
        request.method,
        request.path,
        response.status,
        (time.perf_counter() - start) * 1000,
        request.get(RERANK_STATUS, "-"),
    )
    return response


def _http_error(e: web.HTTPException) -> SidecarError:
    err = SidecarError(e.reason)
    err.status = e.status
    err.type = "content_too_long_exception" if e.status == 413 else "illegal_argument_exception"
    return err


def create_app(settings: Settings, *, scorer: Scorer | None = None) -> web.Application:
    """Build the app. ``scorer`` is a seam for tests; by default the model engine from settings is used."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=settings.max_search_body_bytes)
    app[SETTINGS] = settings
    app[UPSTREAM] = Upstream(settings)
    app[METRICS] = Metrics()
    if scorer is None:
        from sidecar.rerank.scorers.local import ModelScorer

        scorer = ModelScorer(settings, app[METRICS])
    app[RERANK] = RerankService(settings, app[UPSTREAM], app[METRICS], scorer=scorer)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await app[UPSTREAM].start()
        try:
            await app[RERANK].start()
            yield
        finally:
            await app[RERANK].close()
            await app[UPSTREAM].close()

    app.cleanup_ctx.append(lifecycle)
    admin.add_routes(app)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app
