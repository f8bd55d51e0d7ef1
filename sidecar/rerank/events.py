"""`events_index`: one small document per reranked or shadowed search, written to the engine for dashboards.

Documents go to daily indices ``{events_index}-YYYY.MM.DD`` (UTC) in `_bulk` batches, sent by one task from a
bounded buffer, straight to the engine (never through our own interception) with the settings' credentials. A
full buffer, a slow engine or a refused batch drops events and counts them; a search never waits for an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any, Protocol

from sidecar.errors import SidecarError
from sidecar.metrics import Metrics
from sidecar.rerank.outcome import Outcome
from sidecar.search.plan import Plan

log = logging.getLogger(__name__)


class Sender(Protocol):
    async def json(
        self, method: str, path_qs: str, body: Any = None, timeout: float | None = None, *, ndjson: bytes | None = None
    ) -> Any: ...


def event(kind: str, indices: tuple[str, ...], plan: Plan, outcome: Outcome, with_query: bool) -> dict[str, Any]:
    """The document of one reranked (or fallen back) search; no query text unless ``with_query``."""
    doc: dict[str, Any] = {
        "@timestamp": _now(),
        "kind": kind,
        "outcome": outcome.kind,
        "window": outcome.window,
        "reranked": outcome.reranked,
        "model": outcome.model or plan.model,
    }
    if indices:
        doc["index"] = ",".join(indices)
    if plan.rule is not None:
        doc["rule"] = plan.rule
    reason = outcome.cut or (outcome.reason if outcome.kind == "fallback" else "")
    if reason:
        doc["reason"] = reason
    if outcome.took_ms is not None:
        doc["added_ms"] = round(outcome.took_ms, 3)
    if with_query:
        doc["query"] = plan.query
    return doc


def shadow_event(
    kind: str, indices: tuple[str, ...], plan: Plan, figures: dict[str, float], with_query: bool
) -> dict[str, Any]:
    """The document of one shadowed search: what reranking would have changed, and cost."""
    doc = event(kind, indices, plan, Outcome("skipped", "shadow", plan.model, window=plan.window), with_query)
    doc["outcome"] = "shadow"
    doc["shadow"] = figures
    return doc


class EventLog:
    def __init__(
        self,
        engine: Sender,
        metrics: Metrics,
        index: str,
        *,
        buffer: int,
        batch: int,
        flush_s: float,
        timeout_s: float,
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._index = index
        self._pending: deque[dict[str, Any]] = deque()
        self._buffer = buffer
        self._batch = batch
        self._flush_s = flush_s
        self._timeout_s = timeout_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def record(self, doc: dict[str, Any]) -> None:
        """Never blocks: past ``buffer`` waiting events, the new one is dropped and counted."""
        if len(self._pending) >= self._buffer:
            self._metrics.events.labels("dropped").inc()
            return
        self._pending.append(doc)
        if len(self._pending) >= self._batch:
            self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="events")

    async def close(self) -> None:
        """Send what waits (one last try, within the timeout), then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            await self._send_batch()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_s)
            self._wake.clear()
            while self._pending:
                await self._send_batch()

    async def _send_batch(self) -> None:
        docs = [self._pending.popleft() for _ in range(min(self._batch, len(self._pending)))]
        body = await asyncio.to_thread(self._ndjson, docs)
        t0 = time.perf_counter()
        try:
            status, reply = await self._engine.json("POST", "/_bulk", timeout=self._timeout_s, ndjson=body)
        except SidecarError as e:  # unreachable or too slow: the batch is dropped, the searches never knew
            log.warning("events: %d dropped, the engine did not take the batch: %s", len(docs), e)
            self._metrics.events.labels("dropped").inc(len(docs))
            return
        finally:
            self._metrics.events_seconds.observe(time.perf_counter() - t0)
        failed = _failed_items(status, reply, len(docs))
        if failed:
            log.warning("events: the engine refused %d of %d (status %s)", failed, len(docs), status)
            self._metrics.events.labels("failed").inc(failed)
        self._metrics.events.labels("written").inc(len(docs) - failed)

    def _ndjson(self, docs: list[dict[str, Any]]) -> bytes:
        lines = []
        for doc in docs:
            day = doc["@timestamp"][:10].replace("-", ".")
            lines.append(json.dumps({"index": {"_index": f"{self._index}-{day}"}}))
            lines.append(json.dumps(doc, separators=(",", ":")))
        return ("\n".join(lines) + "\n").encode()


def _failed_items(status: int, reply: Any, sent: int) -> int:
    """Items the engine did not store: all of them unless a 200 `_bulk` reply says which."""
    if status != 200 or not isinstance(reply, dict):
        return sent
    if not reply.get("errors"):
        return 0
    items = reply.get("items") or []
    return sum(1 for item in items if any(v.get("status", 500) >= 300 for v in item.values() if isinstance(v, dict)))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
