"""Prometheus metrics, one registry per application (never the process-global default)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from sidecar.rerank.outcome import Outcome

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def request_started(self) -> None:
        self.in_flight += 1

    def request_ended(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._quiet_since = time.monotonic()

    def idle_s(self) -> float:
        """Seconds since the last client request ended, while none is being served; 0 while one is."""
        return 0.0 if self.in_flight else time.monotonic() - self._quiet_since

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sidecar_requests", "Requests served", ["route", "status"], registry=r)
        # Client requests being served (the middleware counts them), and when the last one ended: shadow work on
        # a CPU runs only in the capacity the served traffic leaves idle. Plain numbers; the gauge reads them at
        # scrape time only.
        self.in_flight = 0
        self._quiet_since = time.monotonic()
        Gauge("sidecar_requests_in_flight", "Client requests being served", registry=r).set_function(
            lambda: self.in_flight
        )
        self.upstream_seconds = Histogram(
            "sidecar_upstream_seconds",
            "Time to the engine's reply headers",
            ["route"],
            buckets=_LATENCY,
            registry=r,
        )
        self.upstream_node_up = Gauge(
            "sidecar_upstream_node_up",
            "1 while an upstream node answers; 0 from a connection failure or timeout until it answers again",
            ["node"],
            registry=r,
        )
        self.rerank_seconds = Histogram("sidecar_rerank_seconds", "Model time per search", buckets=_LATENCY, registry=r)
        self.window = Histogram(
            "sidecar_rerank_window",
            "Hits scored per search",
            buckets=(10, 25, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.reranked_fraction = Histogram(
            "sidecar_rerank_fraction",
            "Fraction of the window reranked per search (below 1: the latency budget ran out)",
            buckets=(0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1),
            registry=r,
        )
        self.batch_pairs = Histogram(
            "sidecar_batch_pairs",
            "Pairs per model batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.queue_pairs = Gauge("sidecar_queue_pairs", "Pairs waiting for the model", registry=r)
        self.dropped_pairs = Counter(
            "sidecar_rerank_dropped_pairs",
            "Pairs taken off the model's queue unscored because their search was abandoned (the client went away)",
            registry=r,
        )
        self.connections_closed = Counter(
            "sidecar_connections_closed",
            "Client connections the server closed at a limit: header_timeout, body_timeout, max_connections",
            ["reason"],
            registry=r,
        )
        self.cache = Counter("sidecar_score_cache", "Score cache lookups", ["result"], registry=r)
        self.embeddings = Counter(
            "sidecar_embeddings",
            "Bi-encoder embedding lookups, by where answered (missing: computed)",
            ["source"],
            registry=r,
        )
        self.circuit_open = Gauge("sidecar_circuit_open", "1 while a model's circuit is open", ["model"], registry=r)
        self.rerank = Counter("sidecar_rerank", "Searches by rerank outcome", ["outcome", "reason"], registry=r)
        self._requests: dict[tuple[str, ...], Counter] = {}  # labelled children, kept (see _child)
        self._reranks: dict[tuple[str, ...], Counter] = {}
        self.events = Counter(
            "sidecar_events",
            "Search events for events_index: written, dropped (buffer or engine), failed",
            ["result"],
            registry=r,
        )
        self.events_seconds = Histogram("sidecar_events_bulk_seconds", "Time of one events _bulk request", registry=r)
        self.shadow = Counter("sidecar_shadow", "Shadowed searches: done, dropped, failed", ["result"], registry=r)
        self.shadow_overlap = Histogram(
            "sidecar_shadow_overlap_at_10",
            "Shadow mode: share of the engine's top 10 still in the reranked top 10",
            buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.shadow_top_rank = Histogram(
            "sidecar_shadow_top_hit_rank",
            "Shadow mode: where the engine's top hit lands after reranking (1: it stays first)",
            buckets=(1, 2, 3, 5, 10, 20, 50, 100),
            registry=r,
        )
        self.shadow_tau = Histogram(
            "sidecar_shadow_kendall_tau",
            "Shadow mode: Kendall's tau between the engine's and the reranked order of the window",
            buckets=(-1.0, -0.5, 0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.shadow_seconds = Histogram(
            "sidecar_shadow_seconds",
            "Shadow mode: the window's fetch and model time (at idle priority: an upper bound of what serving "
            "reranked would add)",
            buckets=_LATENCY,
            registry=r,
        )

    def count_request(self, route: str, status: int) -> None:
        """``sidecar_requests_total{route, status}`` + 1."""
        _child(self._requests, self.requests, route, str(status)).inc()

    def record(self, outcome: Outcome) -> None:
        """A search's outcome (each reranked item of an _msearch counts as one search)."""
        for o in outcome.items or (outcome,):
            _child(self._reranks, self.rerank, o.kind, o.reason).inc()
            if o.kind == "applied":
                self.window.observe(o.reranked)
                self.reranked_fraction.observe(o.reranked / o.window if o.window else 1.0)
                if o.took_ms is not None:
                    self.rerank_seconds.observe(o.took_ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _child(kept: dict[tuple[str, ...], Counter], counter: Counter, *labels: str) -> Counter:
    """``counter.labels(*labels)``, kept in ``kept``: labels() costs every request a few microseconds (it checks
    and joins the values under a lock), a tenth of what the middleware adds to a pass-through. The labels of these
    counters are few (routes, statuses, outcome reasons), so the dict stays small."""
    child = kept.get(labels)
    if child is None:
        child = kept[labels] = counter.labels(*labels)
    return child
