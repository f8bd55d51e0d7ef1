"""`bench scorer`: our scoring engine vs sentence-transformers' CrossEncoder.predict on the same pairs."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import ModelSpec, Settings
from ..datasets import Candidates
from ..metrics import Metrics
from .stats import percentile, table

Request = tuple[str, list[str]]


def build_cross_encoder(source: Path, out: Path, seed: int = 0) -> Path:
    """MiniLM-L6-H384 with a fresh (seeded) one-logit head: the shape and cost of ms-marco-MiniLM-L6-v2."""
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_pretrained(str(source), num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(out)
    return out


def throughput(model: str, requests: Sequence[Request], precisions: Sequence[str], rounds: int) -> str:
    """Docs/s of each engine, alternated round by round over the same requests, and the ratio to the baseline."""
    import numpy as np
    import torch
    from sentence_transformers import CrossEncoder

    from ..rerank.models import load_model

    ours = {
        p: load_model("bench", ModelSpec(path=model), device="cpu", precision=p, max_length=None, token_cache=0)
        for p in precisions
    }
    baseline = CrossEncoder(model, device="cpu")
    identity = torch.nn.Identity()

    def predict(q: str, texts: list[str]) -> Sequence[float]:
        return [
            float(x) for x in baseline.predict([(q, d) for d in texts], activation_fn=identity, show_progress_bar=False)
        ]

    engines: dict[str, Callable[[str, list[str]], Sequence[float]]] = {
        "sentence-transformers CrossEncoder.predict": predict,
        **{f"rerank-sidecar ({p})": functools.partial(_ours, m) for p, m in ours.items()},
    }
    seconds = dict.fromkeys(engines, 0.0)
    scores: dict[str, list[float]] = {name: [] for name in engines}
    for r in range(rounds):
        for name, score in engines.items():
            start = time.perf_counter()
            out = [float(x) for q, texts in requests for x in score(q, texts)]
            seconds[name] += time.perf_counter() - start
            if r == 0:
                scores[name] = out
            print(f"  round {r + 1}: {name}: {time.perf_counter() - start:.1f} s", flush=True)
    docs = sum(len(t) for _, t in requests) * rounds
    base_name = next(iter(engines))
    rows = []
    for name in engines:
        diff = float(np.abs(np.array(scores[name]) - np.array(scores[base_name])).max())
        rows.append(
            [
                name,
                f"{docs / seconds[name]:.0f}",
                f"{seconds[base_name] / seconds[name]:.2f}x",
                f"{seconds[name] / docs * 100_000 / 1000:.2f}",
                f"{diff:.1e}",
            ]
        )
    return table(["engine", "docs/s", "vs baseline", "s per top-100", "max |score diff|"], rows)


def _ours(model: Any, query: str, texts: list[str]) -> Sequence[float]:
    scores: list[float] = model.score(query, texts, 2048)
    return scores


def latency(model: str, requests: Sequence[Request], levels: Sequence[int], waits_ms: Sequence[int]) -> str:
    """Per-request latency of top-100 reranks through the ModelScorer (queue, batches, cache) at each concurrency."""
    rows = []
    for wait in waits_ms:
        for clients in levels:
            settings = Settings(model=model, precision="fp32", max_wait_ms=wait, score_cache_entries=0)
            took = asyncio.run(_concurrent(settings, requests, clients, repeat=False))
            rows.append([f"{clients}", f"{wait} ms", f"{percentile(took, 50):.0f}", f"{percentile(took, 99):.0f}"])
    settings = Settings(model=model, precision="fp32", max_wait_ms=0)
    took = asyncio.run(_concurrent(settings, requests[:8], 1, repeat=True))
    rows.append(["1 (cache hit)", "-", f"{percentile(took, 50):.1f}", f"{percentile(took, 99):.1f}"])
    return table(["concurrent requests", "max_wait_ms", "p50 ms", "p99 ms"], rows)


async def _concurrent(settings: Settings, requests: Sequence[Request], clients: int, *, repeat: bool) -> list[float]:
    from ..rerank.engine import ModelScorer

    scorer = ModelScorer(settings, Metrics())
    await scorer.start()
    took: list[float] = []
    try:
        if repeat:  # the second time, every (query, document) score comes from the cache
            for q, texts in requests:
                await scorer.scores(None, q, texts)
        queue = list(requests)

        async def client() -> None:
            while queue:
                q, texts = queue.pop()
                start = time.perf_counter()
                await scorer.scores(None, q, texts)
                took.append((time.perf_counter() - start) * 1000)

        await asyncio.gather(*(client() for _ in range(clients)))
    finally:
        await scorer.close()
    return took


def requests_from(rows: Sequence[Candidates], limit: int | None) -> list[Request]:
    return [(c.query, list(c.texts)) for c in rows[:limit]]


def describe(requests: Sequence[Request], model: str) -> str:
    pairs = sum(len(t) for _, t in requests)
    return f"{len(requests)} queries, {pairs} query-passage pairs (TREC DL19 BM25 top 100); model {model}"
