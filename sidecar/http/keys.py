"""Typed keys for what lives on the application (no module globals)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from sidecar.config import Settings
from sidecar.upstream import Upstream

if TYPE_CHECKING:
    from sidecar.metrics import Metrics
    from sidecar.rerank.pipeline import RerankService

SETTINGS = web.AppKey("settings", Settings)
UPSTREAM = web.AppKey("upstream", Upstream)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
RERANK: web.AppKey[RerankService] = web.AppKey("rerank")

# Per-request notes for the access log and metrics.
ROUTE = web.RequestKey("route", str)
RERANK_STATUS = web.RequestKey("rerank_status", str)
