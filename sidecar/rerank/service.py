"""Orchestrates a rerank: parse, fetch the window, score, splice, reply."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from ..config import Settings
from ..metrics import Metrics
from ..proxy import forward
from ..search.routes import SearchRoute
from ..upstream import Upstream
from .scorer import Scorer


class RerankService:
    def __init__(self, settings: Settings, upstream: Upstream, metrics: Metrics, *, scorer: Scorer | None) -> None:
        self._settings = settings
        self._upstream = upstream
        self._metrics = metrics
        self._scorer = scorer

    async def start(self) -> None:
        if self._scorer is not None:
            await self._scorer.start()

    async def close(self) -> None:
        if self._scorer is not None:
            await self._scorer.close()

    def readiness(self) -> Mapping[str, Mapping[str, object]]:
        return {} if self._scorer is None else self._scorer.readiness()

    async def handle(self, request: web.Request, route: SearchRoute) -> web.StreamResponse:
        return await forward(request)
