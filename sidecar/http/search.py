"""The catch-all handler: searches go to the rerank service, everything else straight through."""

from __future__ import annotations

from aiohttp import web

from sidecar.http.keys import RERANK, ROUTE
from sidecar.http.passthrough import forward
from sidecar.search.routes import search_route


async def dispatch(request: web.Request) -> web.StreamResponse:
    route = search_route(request.method, request.path)
    if route is None:
        return await forward(request)
    request[ROUTE] = route.kind
    return await request.app[RERANK].handle(request, route)
