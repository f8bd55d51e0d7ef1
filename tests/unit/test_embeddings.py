"""The embedding store: bounded memory, a SQLite file that survives restarts, kills and a second process."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sidecar.rerank.scorers.embeddings import Embeddings, MemoryCache, SqliteStore


def _vec(seed: int, rows: int = 1, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


def test_memory_is_bounded_in_bytes_and_keeps_the_recently_used() -> None:
    cache = MemoryCache(max_bytes=3 * 32)  # three 8-float vectors
    for i in range(3):
        cache.put("s", bytes([i]), _vec(i))
    assert cache.get("s", b"\x00") is not None  # 0 is now the most recent
    cache.put("s", b"\x03", _vec(3))
    assert cache.get("s", b"\x01") is None and cache.get("s", b"\x00") is not None
    assert cache.bytes <= cache.max_bytes
    cache.put("s", b"big", _vec(9, rows=10))  # larger than the whole cache: not kept, nothing evicted
    assert cache.get("s", b"big") is None and cache.get("s", b"\x03") is not None


def test_the_file_survives_a_restart_and_keeps_spaces_apart(tmp_path: Path) -> None:
    path = tmp_path / "emb.sqlite"
    store = SqliteStore(path, max_bytes=10**6)
    store.put_many("model-a", [(b"k1", _vec(1, rows=2)), (b"k2", _vec(2))])
    store.close()
    again = Embeddings("model-a", MemoryCache(10**6), SqliteStore(path, max_bytes=10**6))
    got = again.get_many([b"k1", b"k2", b"k3"])
    assert set(got) == {b"k1", b"k2"} and np.array_equal(got[b"k1"], _vec(1, rows=2))
    assert again.known(b"k1")  # read from the file into memory
    assert Embeddings("model-b", MemoryCache(10**6), SqliteStore(path, max_bytes=10**6)).get_many([b"k1"]) == {}


def test_the_file_is_bounded_and_drops_the_oldest(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "emb.sqlite", max_bytes=600 * 32)
    for batch in range(4):
        store.put_many("s", [(f"{batch}-{i}".encode(), _vec(i)) for i in range(500)])
    assert store.size_bytes() <= 600 * 32
    assert store.has_many("s", [b"3-499"]) == {b"3-499"} and not store.has_many("s", [b"0-0"])


_WRITER = """
import sys, numpy as np
from pathlib import Path
from sidecar.rerank.scorers.embeddings import SqliteStore
store = SqliteStore(Path(sys.argv[1]), max_bytes=10**9)
print("ready", flush=True)
i = 0
while True:
    store.put_many("s", [(f"{i}-{j}".encode(), np.ones((1, 8), np.float32) * i) for j in range(200)])
    i += 1
"""


def test_a_writer_killed_mid_write_leaves_a_sound_file_that_another_process_reads(tmp_path: Path) -> None:
    path = tmp_path / "emb.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    reader = SqliteStore(path, max_bytes=10**9)  # a second process's view, while the first writes
    deadline = time.monotonic() + 20
    while reader.count("s") < 2000 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    count = reader.count("s")
    assert count >= 2000 and count % 200 == 0  # whole transactions only
    row = reader.get_many("s", [b"3-7"])[b"3-7"]
    assert np.array_equal(row, np.full((1, 8), 3.0, np.float32))


@pytest.mark.slow  # five model loads
async def test_a_warm_store_scores_as_the_cold_path_and_survives_a_restart(tmp_path: Path) -> None:
    """Real weights (the packaged bi-encoder) at fp32: kept embeddings give the scores computed afresh."""
    from sidecar.config import Settings
    from sidecar.metrics import Metrics
    from sidecar.rerank.scorers.local import LocalScorer
    from tests.models import packaged_minilm

    docs = [f"passage {i} about parsing dates, json and time zones " * (1 + i % 3) for i in range(20)]
    base = {"model": str(packaged_minilm()), "precision": "fp32", "score_cache_entries": 0}

    async def scores(settings: Settings, query: str) -> tuple[list[float], dict[str, int]]:
        scorer = LocalScorer(settings, Metrics())
        await scorer.start()
        try:
            got = await scorer.scores("default", query, docs)
            embeddings = scorer._models["default"].model.embeddings  # type: ignore[union-attr]
            return got, dict(embeddings.found) if embeddings is not None else {}
        finally:
            await scorer.close()

    cold, _ = await scores(Settings(**base, embedding_cache_mb=0), "how to parse a date")
    stored = Settings(**base, embedding_store=tmp_path / "emb.sqlite")
    first, found = await scores(stored, "how to parse a date")
    assert found == {"memory": 0, "store": 0, "missing": len(docs) + 1}  # every document and the query computed
    assert np.allclose(first, cold, atol=1e-5)
    again, found = await scores(stored, "how to parse a date")  # a new process: memory is empty
    assert found["store"] == len(docs) and np.allclose(again, cold, atol=1e-5)
    other_cold, _ = await scores(Settings(**base, embedding_cache_mb=0), "json time zones")
    other, _ = await scores(stored, "json time zones")
    assert np.allclose(other, other_cold, atol=1e-5)
