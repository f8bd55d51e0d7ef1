"""Document embeddings kept for bi-encoders: a memory LRU bounded in MB, over an optional SQLite file.

The file (``embedding_store``) is SQLite in WAL mode: crash-safe (a torn write never corrupts it), shared by the
`serve` processes of one host (one writer at a time, readers never blocked), bounded in MB (the oldest rows go
first), and it survives restarts. Keys are a text's hash within a *space* that names the model, its precision
and its token limits, so embeddings of different models or settings never mix.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from sidecar.metrics import Metrics

Vectors = npt.NDArray[np.float32]  # one row per chunk of the text

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    space TEXT NOT NULL,
    key BLOB NOT NULL,
    dim INTEGER NOT NULL,
    vec BLOB NOT NULL,
    added REAL NOT NULL,
    PRIMARY KEY (space, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS embeddings_added ON embeddings (added);
"""


class MemoryCache:
    """An LRU of vectors bounded by their bytes; safe to use from several threads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[tuple[str, bytes], Vectors] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, space: str, key: bytes) -> Vectors | None:
        with self._lock:
            value = self._data.get((space, key))
            if value is not None:
                self._data.move_to_end((space, key))
            return value

    def __contains__(self, item: tuple[str, bytes]) -> bool:
        with self._lock:
            return item in self._data

    def put(self, space: str, key: bytes, value: Vectors) -> None:
        if value.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop((space, key), None)
            self._bytes += value.nbytes - (old.nbytes if old is not None else 0)
            self._data[(space, key)] = value
            while self._bytes > self.max_bytes:
                _, dropped = self._data.popitem(last=False)
                self._bytes -= dropped.nbytes

    @property
    def bytes(self) -> int:
        return self._bytes


class SqliteStore:
    """Vectors in one SQLite file, bounded in bytes: past the bound, the oldest rows are deleted."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._since_check = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get_many(self, space: str, keys: Sequence[bytes]) -> dict[bytes, Vectors]:
        rows = self._select("key, dim, vec", space, keys)
        return {bytes(key): np.frombuffer(vec, dtype=np.float32).reshape(-1, dim) for key, dim, vec in rows}

    def has_many(self, space: str, keys: Sequence[bytes]) -> set[bytes]:
        return {bytes(key) for (key,) in self._select("key", space, keys)}

    def _select(self, columns: str, space: str, keys: Sequence[bytes]) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        with self._lock:
            for start in range(0, len(keys), 500):  # SQLite's limit on bound parameters
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT {columns} FROM embeddings WHERE space = ? AND key IN ({marks})"
                out += self._db.execute(sql, [space, *chunk]).fetchall()
        return out

    def put_many(self, space: str, items: Iterable[tuple[bytes, Vectors]]) -> None:
        now = time.time()
        rows = [(space, key, int(v.shape[-1]), np.ascontiguousarray(v, np.float32).tobytes(), now) for key, v in items]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?)", rows)
                self._since_check += len(rows)
                if self._since_check >= 1000:
                    self._since_check = 0
                    self._trim()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _trim(self) -> None:
        """Delete the oldest rows while the file's vectors are over the bound (inside the caller's transaction)."""
        (size,) = self._db.execute("SELECT COALESCE(SUM(LENGTH(vec)), 0) FROM embeddings").fetchone()
        if size <= self.max_bytes:
            return
        excess = size - int(self.max_bytes * 0.9)  # leave room, so that a trim is not needed at every write
        cutoff = self._db.execute(
            "SELECT added FROM (SELECT added, SUM(LENGTH(vec)) OVER (ORDER BY added) AS total FROM embeddings) "
            "WHERE total >= ? ORDER BY added LIMIT 1",
            (excess,),
        ).fetchone()
        if cutoff is not None:
            self._db.execute("DELETE FROM embeddings WHERE added <= ?", cutoff)

    def size_bytes(self) -> int:
        with self._lock:
            (size,) = self._db.execute("SELECT COALESCE(SUM(LENGTH(vec)), 0) FROM embeddings").fetchone()
        return int(size)

    def count(self, space: str) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM embeddings WHERE space = ?", (space,)).fetchone()
        return int(n)


class Embeddings:
    """What a bi-encoder asks: the vectors known for these text keys (memory first, then the file), and keep
    these new ones (in both)."""

    def __init__(
        self, space: str, memory: MemoryCache, store: SqliteStore | None = None, metrics: Metrics | None = None
    ) -> None:
        self.space = space
        self.memory = memory
        self.store = store
        self.found = {"memory": 0, "store": 0, "missing": 0}  # lookups, by where they were answered
        self._metrics = metrics

    def known(self, key: bytes) -> bool:
        """In memory (a cheap check the cost model may make from the event loop)."""
        return (self.space, key) in self.memory

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, Vectors]:
        out: dict[bytes, Vectors] = {}
        missing = []
        for key in keys:
            value = self.memory.get(self.space, key)
            if value is None:
                missing.append(key)
            else:
                out[key] = value
        self.found["memory"] += len(out)
        stored: dict[bytes, Vectors] = {}
        if missing and self.store is not None:
            stored = self.store.get_many(self.space, missing)
            for key, value in stored.items():
                self.memory.put(self.space, key, value)
                out[key] = value
            self.found["store"] += len(stored)
        self.found["missing"] += len(keys) - len(out)
        if self._metrics is not None:
            for where, n in (
                ("memory", len(out) - len(stored)),
                ("store", len(stored)),
                ("missing", len(keys) - len(out)),
            ):
                self._metrics.embeddings.labels(where).inc(n)
        return out

    def put_many(self, items: Sequence[tuple[bytes, Vectors]], persist: bool = True) -> None:
        """Keep in memory, and in the file too unless ``persist`` is False (queries: they rarely repeat)."""
        for key, value in items:
            self.memory.put(self.space, key, value)
        if persist and self.store is not None:
            self.store.put_many(self.space, items)
