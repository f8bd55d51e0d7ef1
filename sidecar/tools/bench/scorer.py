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


def cross_encoder(given: Path | None, work: Path) -> tuple[str, bool]:
    """The cross-encoder a benchmark measures, and whether it is trained: ``given``, else the one `distill`
    built into ``DISTILLED``, else a fresh head on the packaged encoder (the shape and cost, not the quality)."""
    from sidecar.tools.embedded import DISTILLED, packaged_model

    if given is not None:
        return str(given), True
    if (DISTILLED / "config.json").exists():
        return str(DISTILLED), True
    return str(build_cross_encoder(packaged_model(), work)), False


def parse_contenders(spec: str) -> list[tuple[str, str]]:
    """``auto,fp32,onnx:int8`` -> [(backend, precision)]: a bare precision runs on backend auto."""
    out = []
    for item in (i.strip() for i in spec.split(",")):
        if item:
            backend, _, precision = item.rpartition(":")
            out.append((backend or "auto", precision))
    return out


def batch_for(device: str) -> int:
    """The padded tokens of one model batch on ``device`` (``auto`` resolved as the sidecar resolves it)."""
    from sidecar.rerank.scorers.models import choose_device, device_batch_tokens

    return device_batch_tokens(choose_device(device))


def on_cpu(device: str) -> bool:
    from sidecar.rerank.scorers.models import choose_device

    return choose_device(device).type == "cpu"


def throughput(
    model: str,
    requests: Sequence[Request],
    contenders: Sequence[tuple[str, str]],
    rounds: int,
    *,
    device: str = "cpu",
    batch_tokens: int | None = None,
) -> tuple[str, float]:
    """Docs/s of each contender, alternated request by request over the same requests, and the ratio to the baseline.

    Each row names the kernel that ran (backend, precision, CPU feature or device), as ``/ready`` does."""
    import numpy as np
    from sentence_transformers import CrossEncoder

    from sidecar.rerank.scorers.models import choose_device, load_model

    dev = choose_device(device)
    tokens = batch_tokens or batch_for(device)
    ours: dict[str, Any] = {}
    auto = None
    for backend, precision in contenders:
        loaded = load_model(
            "bench", ModelSpec(path=model), device=str(dev), precision=precision, backend=backend, max_length=None,
            token_cache=0,
        )  # fmt: skip
        ours.setdefault(loaded.kernel, loaded)  # the same kernel asked for twice (auto and by name) runs once
        auto = loaded.kernel if (backend, precision) == ("auto", "auto") else auto
    ours = {f"rerank-sidecar {k}" + (" (auto)" if k == auto else ""): m for k, m in ours.items()}
    baseline = CrossEncoder(model, device=str(dev))
    import torch

    identity = torch.nn.Identity()

    def predict(q: str, texts: list[str]) -> Sequence[float]:
        pairs = [(q, d) for d in texts]
        return [float(x) for x in baseline.predict(pairs, activation_fn=identity, show_progress_bar=False)]

    contenders_by_name: dict[str, Callable[[str, list[str]], Sequence[float]]] = {
        "sentence-transformers CrossEncoder.predict": predict,
        **{name: functools.partial(_ours, m, tokens) for name, m in ours.items()},
    }
    seconds = dict.fromkeys(contenders_by_name, 0.0)
    scores: dict[str, list[list[float]]] = {name: [] for name in contenders_by_name}
    for r in range(rounds):
        for q, texts in requests:  # contenders alternate request by request: the machine's drift hits all alike
            for name, score in contenders_by_name.items():
                start = time.perf_counter()
                out = [float(x) for x in score(q, texts)]
                seconds[name] += time.perf_counter() - start
                if r == 0:
                    scores[name].append(out)
        print(f"  round {r + 1}: " + ", ".join(f"{n}: {s:.1f} s" for n, s in seconds.items()), flush=True)
    docs = sum(len(t) for _, t in requests) * rounds
    base_name = next(iter(contenders_by_name))
    rows = []
    for name in contenders_by_name:
        got, want = scores[name], scores[base_name]
        diff = max(float(np.abs(np.array(a) - np.array(b)).max()) for a, b in zip(got, want, strict=True))
        rows.append(
            [
                name,
                f"{docs / seconds[name]:.0f}",
                f"{seconds[base_name] / seconds[name]:.2f}x",
                f"{seconds[name] / docs * 100_000 / 1000:.2f}",
                f"{diff:.1e}",
                f"{top_agreement(got, want, 10):.2f}",
            ]
        )
    header = ["contender", "docs/s", "vs baseline", "s per top-100", "max |score diff|", "top-10 agreement"]
    note = f"device {dev}, batches of {tokens} padded tokens"
    return note + "\n" + table(header, rows), seconds[base_name] / docs * 100


def top_agreement(got: Sequence[Sequence[float]], want: Sequence[Sequence[float]], k: int) -> float:
    """Mean share of each request's top ``k`` by ``want`` that ``got`` also puts in its top ``k``."""

    def top(scores: Sequence[float]) -> set[int]:
        return set(sorted(range(len(scores)), key=lambda i: -scores[i])[:k])

    shares = [len(top(a) & top(b)) / min(k, len(b)) for a, b in zip(got, want, strict=True) if b]
    return sum(shares) / len(shares) if shares else 1.0


def cpu_line() -> str:
    """This CPU's table features and what ``precision: auto`` runs on it with the installed backends."""
    from sidecar.rerank.scorers import cpu
    from sidecar.rerank.scorers.models import installed_backends

    features, installed = cpu.cpu_features(), installed_backends()
    chosen = cpu.pick(features, installed)
    return (
        f"CPU features {', '.join(sorted(features)) or 'none of ' + ', '.join(sorted(cpu.FEATURES))}; "
        f"backends installed: {', '.join(sorted(installed))}; precision auto runs {chosen.name}"
    )


def compute_floor(model: str, requests: Sequence[Request], baseline_s_per_100: float) -> str:
    """The least time any fp32 contender can take on these pairs here: their matmul FLOPs at this CPU's best rate.

    FLOPs count every pair at its own length (no padding): 2 x the encoder's linear weights per token, plus
    attention (4 x length^2 x hidden per layer). The rate is torch's fp32 GEMM at the model's FFN shape, timed now.
    """
    import torch

    from sidecar.rerank.scorers.models import load_model

    spec = ModelSpec(path=model)
    loaded = load_model("floor", spec, device="cpu", precision="fp32", backend="torch", max_length=None, token_cache=0)
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


def _ours(model: Any, batch_tokens: int, query: str, texts: list[str]) -> Sequence[float]:
    scores: list[float] = model.score(query, texts, batch_tokens)
    return scores


def latency(
    model: str, requests: Sequence[Request], levels: Sequence[int], waits_ms: Sequence[int], device: str = "auto"
) -> str:
    """Per-request latency of top-100 reranks through the LocalScorer (queue, batches, cache) at each concurrency."""
    rows = []
    for wait in waits_ms:
        for clients in levels:
            settings = Settings(model=model, max_wait_ms=wait, score_cache_entries=0, device=device)
            took = asyncio.run(_concurrent(settings, requests, clients, repeat=False))
            rows.append([f"{clients}", f"{wait} ms", f"{percentile(took, 50):.0f}", f"{percentile(took, 99):.0f}"])
    settings = Settings(model=model, max_wait_ms=0, device=device)
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
