"""The sidecar's own endpoints under /_sidecar/."""

from __future__ import annotations

import hmac

from aiohttp import web
from pydantic import SecretStr

from sidecar.errors import NotReady, Unauthorized, UpstreamUnavailable
from sidecar.http.keys import METRICS, PIPELINE, SETTINGS, UPSTREAM


def _check_token(request: web.Request) -> None:
    """The one Authorization header must be ``Bearer <admin_token>``. Compared as the bytes the client sent (aiohttp's
    decoded str of a non-ASCII header is not one we could encode back), in constant time."""
    token = request.app[SETTINGS].admin_token
    if token is None:
        return
    _compare(_authorization(request), token)


def _probe_or_admin(request: web.Request) -> bool:
    """True when the caller may see details: no ``admin_token`` is set, or the request carries it. A request with no
    Authorization header at all is a probe (kubelet's, a load balancer's): False, answered with a minimal body. A
    request that does send credentials must send the right ones (401 otherwise), as on every admin endpoint."""
    token = request.app[SETTINGS].admin_token
    if token is None:
        return True
    given = _authorization(request)
    if not given:
        return False
    _compare(given, token)
    return True


def _authorization(request: web.Request) -> list[bytes]:
    return [value for name, value in request.raw_headers if name.lower() == b"authorization"]


def _compare(given: list[bytes], token: SecretStr) -> None:
    credentials = _bearer(given[0]) if len(given) == 1 else None
    if credentials is None or not hmac.compare_digest(credentials, token.get_secret_value().encode()):
        raise Unauthorized("this /_sidecar endpoint needs the admin token (Authorization: Bearer ...)")


def _bearer(value: bytes) -> bytes | None:
    """The credentials of a ``Bearer`` header value (the scheme is case-insensitive), or None for another scheme."""
    scheme, _, credentials = value.strip(b" \t").partition(b" ")
    return credentials.strip(b" \t") if scheme.lower() == b"bearer" else None


async def health(request: web.Request) -> web.Response:
    """Liveness: 200 while the process serves requests, whatever the engine or the models do; never needs a token."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """200 when the engine answers and every configured model is loaded and warm; else 503 with why.

    With ``admin_token`` set, a probe (no Authorization header) gets only the verdict, ``{"status": "ready"}`` or a
    503 whose reason is ``not ready``; the upstream, the models and their circuits are for the token's holder."""
    detailed = _probe_or_admin(request)
    detail: dict[str, object] = {}
    try:
        status, info = await request.app[UPSTREAM].json("GET", "/", timeout=2.0)
    except UpstreamUnavailable as e:
        raise _not_ready(detailed, f"upstream not reachable: {e.reason}") from e
    if status >= 500 or status == 0:
        raise _not_ready(detailed, f"upstream answered {status}")
    version = info.get("version", {}) if isinstance(info, dict) else {}
    detail["upstream"] = {"status": status, "distribution": version.get("distribution", "elasticsearch")}
    models = request.app[PIPELINE].readiness()
    detail["models"] = models
    not_ready = [name for name, state in models.items() if state.get("state") != "ready"]
    if not_ready:
        raise _not_ready(detailed, f"models not ready: {', '.join(sorted(not_ready))}")
    return web.json_response({"status": "ready", **detail} if detailed else {"status": "ready"})


def _not_ready(detailed: bool, reason: str) -> NotReady:
    return NotReady(reason if detailed else "not ready")


async def metrics(request: web.Request) -> web.Response:
    _check_token(request)
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_sidecar/health", health)
    app.router.add_get("/_sidecar/ready", ready)
    app.router.add_get("/_sidecar/metrics", metrics)
