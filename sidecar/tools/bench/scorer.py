"""`bench scorer`: our scorer vs sentence-transformers' CrossEncoder.predict on the same pairs."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sidecar.config import DEFAULT_MODEL, ModelSpec, Settings
from sidecar.metrics import Metrics
from sidecar.tools.bench.stats import percentile, table
from sidecar.tools.datasets import Candidates

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


def throughput(model: str, requests: Sequence[Request], precisions: Sequence[str], rounds: int) -> tuple[str, float]:
    """Docs/s of each contender, alternated request by request over the same requests, and the ratio to the baseline."""
    import numpy as np
    import torch
    from sentence_transformers import CrossEncoder

    from sidecar.rerank.scorers.models import load_model

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

    contenders: dict[str, Callable[[str, list[str]], Sequence[float]]] = {
        "sentence-transformers CrossEncoder.predict": predict,
        **{f"rerank-sidecar ({p})": functools.partial(_ours, m) for p, m in ours.items()},
    }
    seconds = dict.fromkeys(contenders, 0.0)
    scores: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(rounds):
        for q, texts in requests:  # contenders alternate request by request: the machine's drift hits all alike
            for name, score in contenders.items():
                start = time.perf_counter()
                out = [float(x) for x in score(q, texts)]
                seconds[name] += time.perf_counter() - start
                if r == 0:
                    scores[name] += out
        print(f"  round {r + 1}: " + ", ".join(f"{n}: {s:.1f} s" for n, s in seconds.items()), flush=True)
    docs = sum(len(t) for _, t in requests) * rounds
    base_name = next(iter(contenders))
    rows = []
    for name in contenders:
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
    header = ["contender", "docs/s", "vs baseline", "s per top-100", "max |score diff|"]
    return table(header, rows), seconds[base_name] / docs * 100


def compute_floor(model: str, requests: Sequence[Request], baseline_s_per_100: float) -> str:
    """The least time any fp32 contender can take on these pairs here: their matmul FLOPs at this CPU's best rate.

    FLOPs count every pair at its own length (no padding): 2 x the encoder's linear weights per token, plus
    attention (4 x length^2 x hidden per layer). The rate is torch's fp32 GEMM at the model's FFN shape, timed now.
    """
    import torch

    from sidecar.rerank.scorers.models import load_model

    loaded = load_model("floor", ModelSpec(path=model), device="cpu", precision="fp32", max_length=None, token_cache=0)
    cfg = loaded.model.config
    linear = sum(m.in_features * m.out_features for m in loaded.model.modules() if isinstance(m, torch.nn.Linear))
    flops = 0.0
    for q, texts in requests:
        qids = loaded.encoder.query_ids(q)
        for ids in loaded.encoder.ids(texts):
            n = len(loaded.encoder.pair_chunks(qids, ids)[0][0])
            flops += 2 * n * linear + cfg.num_hidden_layers * 4 * n * n * cfg.hidden_size
    a, b = torch.randn(4096, cfg.hidden_size), torch.randn(cfg.hidden_size, cfg.intermediate_size)
    for _ in range(3):
        a @ b
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    rate = reps * 2 * a.shape[0] * a.shape[1] * b.shape[1] / (time.perf_counter() - start)
    docs = sum(len(t) for _, t in requests)
    floor = flops / rate / docs * 100
    return (
        f"fp32 floor: {flops / docs / 1e9:.2f} GFLOP per pair at {rate / 1e9:.0f} GFLOP/s (this CPU's fp32 GEMM now) "
        f"= {floor:.2f} s per top-100, so at most {baseline_s_per_100 / floor:.2f}x over the baseline in fp32"
    )


def _ours(model: Any, query: str, texts: list[str]) -> Sequence[float]:
    scores: list[float] = model.score(query, texts, 2048)
    return scores


def latency(model: str, requests: Sequence[Request], levels: Sequence[int], waits_ms: Sequence[int]) -> str:
    """Per-request latency of top-100 reranks through the LocalScorer (queue, batches, cache) at each concurrency."""
    rows = []
    for wait in waits_ms:
        for clients in levels:
            settings = Settings(model=model, max_wait_ms=wait, score_cache_entries=0)
            took = asyncio.run(_concurrent(settings, requests, clients, repeat=False))
            rows.append([f"{clients}", f"{wait} ms", f"{percentile(took, 50):.0f}", f"{percentile(took, 99):.0f}"])
    settings = Settings(model=model, max_wait_ms=0)
    took = asyncio.run(_concurrent(settings, requests[:8], 1, repeat=True))
    rows.append(["1 (cache hit)", "-", f"{percentile(took, 50):.1f}", f"{percentile(took, 99):.1f}"])
    return table(["concurrent requests", "max_wait_ms", "p50 ms", "p99 ms"], rows)


async def _concurrent(settings: Settings, requests: Sequence[Request], clients: int, *, repeat: bool) -> list[float]:
    from sidecar.rerank.scorers.local import LocalScorer

    scorer = LocalScorer(settings, Metrics())
    await scorer.start()
    took: list[float] = []
    try:
        if repeat:  # the second time, every (query, document) score comes from the cache
            for q, texts in requests:
                await scorer.scores(DEFAULT_MODEL, q, texts)
        queue = list(requests)

        async def client() -> None:
            while queue:
                q, texts = queue.pop()
                start = time.perf_counter()
                await scorer.scores(DEFAULT_MODEL, q, texts)
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
