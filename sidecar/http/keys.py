"""Typed keys for what lives on the application and on a request (no module globals)."""

from __future__ import annotations

from aiohttp import web

from sidecar.config import Settings
from sidecar.http.passthrough import Forwarder
from sidecar.logs import AccessLog
from sidecar.metrics import Metrics
from sidecar.rerank.outcome import Outcome
from sidecar.rerank.pipeline import RerankPipeline
from sidecar.upstream import Upstream

SETTINGS = web.AppKey("settings", Settings)
UPSTREAM = web.AppKey("upstream", Upstream)
METRICS = web.AppKey("metrics", Metrics)
FORWARDER = web.AppKey("forwarder", Forwarder)
PIPELINE = web.AppKey("pipeline", RerankPipeline)
ACCESS_LOG = web.AppKey("access_log", AccessLog)

# Per-request notes for the access log and the metrics.
ROUTE = web.RequestKey("route", str)
OUTCOME = web.RequestKey("outcome", Outcome)
