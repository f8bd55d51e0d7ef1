"""`capture_queries`: the query texts of reranked searches, one per line, for `distill --queries` later.

Only the query text is written, never a document or any other part of a search. The file stops growing at
``limit`` lines (those already in it count). The event loop only enqueues; one thread writes.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

_STOP = None


class QueryCapture:
    def __init__(self, path: Path, limit: int, pending: int = 4096) -> None:
        self._path = path
        self._limit = limit
        self._queue: queue.Queue[str | None] = queue.Queue(pending)
        self._thread = threading.Thread(target=self._write, name="capture-queries", daemon=True)
        self.dropped = 0  # queries not written because the writer fell behind

    def start(self) -> None:
        self._thread.start()

    def record(self, text: str) -> None:
        """Never blocks: a query that finds the writer's queue full is dropped and counted."""
        line = " ".join(text.split())  # one line, no tabs: a queries file
        if not line:
            return
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        """Write what is queued, then stop the writer (called from a thread at shutdown)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def _write(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        if self._path.exists():
            with self._path.open("rb") as f:
                written = sum(1 for _ in f)
        with self._path.open("a", encoding="utf-8") as f:
            while (line := self._queue.get()) is not _STOP:
                if written < self._limit:
                    f.write(line + "\n")
                    f.flush()
                    written += 1
