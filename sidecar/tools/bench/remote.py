"""`bench remote`: the same top-100 reranks scored in this process and through a second sidecar on loopback.

The baseline is the in-process ``LocalScorer``; the contenders are ``RemoteScorer`` clients of another `serve`
process that loads the same model, once per API it answers (``sidecar``: the TEI shape under ``/_sidecar``;
``cohere``: ``/_sidecar/v2/rerank``). Score caches are off on both sides, and one request is in flight at a
time, each query in turn to every contender, so that each reply is a model pass plus what the remote path adds
(JSON both ways, HTTP on loopback, the other process's queue), on the same pairs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sidecar.config import DEFAULT_MODEL, ModelSpec, Settings
from sidecar.metrics import Metrics
from sidecar.rerank.scorers.base import Scorer
from sidecar.tools.bench.scorer import Request
from sidecar.tools.bench.stats import percentile, table
from sidecar.tools.scrape import counter

APIS = ("sidecar", "cohere")
SERVER_FLAGS = ("--score-cache-entries", "0")  # the remote scores every pair it is sent, as the baseline does


def check_no_cache_hits(url: str) -> None:
    """Raise if the remote answered any pair from a cache: its figures would not be model passes."""
    hits = counter(url, "sidecar_score_cache").get("hit", 0.0)
    if hits:
        raise RuntimeError(f"the remote sidecar answered {hits:.0f} pairs from its score cache")


def remote_settings(url: str, timeout_ms: int = 120_000) -> Settings:
    """A client of the sidecar at ``url``, one model per API, caches off."""
    models = {
        api: ModelSpec(url=f"{url}/_sidecar", api=api, remote_model=DEFAULT_MODEL if api == "cohere" else None)
        for api in APIS
    }
    return Settings(model="none", models=models, score_cache_entries=0, rerank_timeout_ms=timeout_ms)


async def measure(model: str, remote_url: str, requests: Sequence[Request], rounds: int) -> dict[str, list[float]]:
    """Milliseconds per rerank for each contender: "in-process", then one per API."""
    from sidecar.rerank.scorers.local import LocalScorer
    from sidecar.rerank.scorers.remote import RemoteScorer

    local = LocalScorer(Settings(model=model, score_cache_entries=0, max_wait_ms=0), Metrics())
    remote = RemoteScorer(remote_settings(remote_url), Metrics())
    contenders: list[tuple[str, Scorer, str]] = [("in-process", local, DEFAULT_MODEL)]
    contenders += [(f"remote ({api})", remote, api) for api in APIS]
    await local.start()
    await remote.start()
    took: dict[str, list[float]] = {name: [] for name, _, _ in contenders}
    try:
        for q, texts in requests[:2]:  # warm-up: the remote's first requests open connections
            for _, scorer, name in contenders:
                await scorer.scores(name, q, texts)
        for _ in range(rounds):
            for q, texts in requests:
                for label, scorer, name in contenders:
                    start = time.perf_counter()
                    scores = await scorer.scores(name, q, texts)
                    took[label].append((time.perf_counter() - start) * 1000)
                    if len(scores) != len(texts):
                        raise RuntimeError(f"{label} scored {len(scores)} of {len(texts)} texts")
    finally:
        await remote.close()
        await local.close()
    return took


def report(took: dict[str, list[float]]) -> str:
    """Per contender: p50/p90 ms per rerank, and what the remote path adds over in-process (ms at p50, ratio)."""
    base = percentile(took["in-process"], 50)
    rows = []
    for label, ms in took.items():
        p50 = percentile(ms, 50)
        added = "-" if label == "in-process" else f"{p50 - base:+.1f}"
        ratio = "-" if label == "in-process" else f"{p50 / base:.2f}x"
        rows.append([label, len(ms), f"{p50:.1f}", f"{percentile(ms, 90):.1f}", added, ratio])
    return table(["scorer", "reranks", "p50 ms", "p90 ms", "added ms (p50)", "p50 vs in-process"], rows)
