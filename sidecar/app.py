"""Application factory: the one place that knows every part. State on typed keys, cleanup contexts, routes."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from sidecar.config import Settings
from sidecar.http import admin, rerank_api
from sidecar.http.keys import ACCESS_LOG, FORWARDER, METRICS, PIPELINE, SETTINGS, UPSTREAM
from sidecar.http.middleware import errors_middleware
from sidecar.http.passthrough import Forwarder
from sidecar.http.search import dispatch
from sidecar.logs import AccessLog
from sidecar.metrics import Metrics
from sidecar.rerank.pipeline import RerankPipeline
from sidecar.rerank.scorers.base import Scorer
from sidecar.upstream import Upstream


def create_app(settings: Settings, *, scorer: Scorer | None = None) -> web.Application:
    """Build the app. ``scorer`` is a seam for tests; by default the models from settings, local and remote."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=settings.max_search_body_bytes)
    metrics = Metrics()
    upstream = Upstream(settings, metrics=metrics)
    if scorer is None:
        from sidecar.rerank.scorers.router import default_scorer

        scorer = default_scorer(settings, metrics)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[UPSTREAM] = upstream
    app[FORWARDER] = Forwarder(settings, upstream)
    app[PIPELINE] = RerankPipeline(settings, upstream, scorer, metrics)
    app[ACCESS_LOG] = AccessLog(settings.log_format)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await app[UPSTREAM].start()
        try:
            await app[PIPELINE].start()
            yield
        finally:
            await app[PIPELINE].close()
            await app[FORWARDER].close()
            await app[UPSTREAM].close()
            app[ACCESS_LOG].close()

    app.cleanup_ctx.append(lifecycle)
    admin.add_routes(app)
    rerank_api.add_routes(app)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app
