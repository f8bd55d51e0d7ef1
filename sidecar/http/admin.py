"""The sidecar's own endpoints under /_sidecar/."""

from __future__ import annotations

import hmac

from aiohttp import web

from sidecar.errors import NotReady, Unauthorized, UpstreamUnavailable
from sidecar.http.keys import METRICS, PIPELINE, SETTINGS, UPSTREAM


def _check_token(request: web.Request) -> None:
    token = request.app[SETTINGS].admin_token
    if token is None:
        return
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise Unauthorized("this /_sidecar endpoint needs the admin token (Authorization: Bearer ...)")


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """200 when the engine answers and every configured model is loaded and warm; else 503 with why."""
    _check_token(request)
    detail: dict[str, object] = {}
    try:
        status, info = await request.app[UPSTREAM].json("GET", "/", timeout=2.0)
    except UpstreamUnavailable as e:
        raise NotReady(f"upstream not reachable: {e.reason}") from e
    if status >= 500 or status == 0:
        raise NotReady(f"upstream answered {status}")
    version = info.get("version", {}) if isinstance(info, dict) else {}
    detail["upstream"] = {"status": status, "distribution": version.get("distribution", "elasticsearch")}
    models = request.app[PIPELINE].readiness()
    detail["models"] = models
    not_ready = [name for name, state in models.items() if state.get("state") != "ready"]
    if not_ready:
        raise NotReady(f"models not ready: {', '.join(sorted(not_ready))}")
    return web.json_response({"status": "ready", **detail})


async def metrics(request: web.Request) -> web.Response:
    _check_token(request)
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_sidecar/health", health)
    app.router.add_get("/_sidecar/ready", ready)
    app.router.add_get("/_sidecar/metrics", metrics)
