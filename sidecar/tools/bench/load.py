"""`bench load`: quality under load. Judged queries of a TREC DL set through a real `serve` process over the
embedded engine holding its corpus, closed loop at several client counts, for several rerank configurations.

For each configuration and client count it reports throughput, the latency added over the engine alone (the
same queries at the same concurrency, measured in the same run just before), the mean fraction of the window
the model reranked, fallbacks, and nDCG@10 of the replies actually served: a budget's quality cost shows.
The score cache is off, and so is the memory of embeddings except for the store setups, or every row after the
first would be served from what the first one computed.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from sidecar.tools import datasets, evaluation
from sidecar.tools.bench.stats import percentile, table
from sidecar.tools.engine_client import EngineClient
from sidecar.tools.indexing import index_dataset
from sidecar.tools.scrape import counter

_WINDOW = re.compile(r"window=(\d+)/(\d+)")


@dataclass(frozen=True)
class Setup:
    """One rerank configuration: a name, the rule's extra keys, other settings, and what a reader must know."""

    name: str
    rule: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    warm: bool = False  # fill the embedding store from the index before serving


@dataclass
class Row:
    setup: str
    clients: int
    rps: float
    added_p50_ms: float
    added_p99_ms: float
    reranked: float  # mean fraction of the window
    fallbacks: int
    ndcg10: float
    note: str = ""
    run: evaluation.Run = field(default_factory=dict)
    served_p50_ms: float = 0.0
    served_p99_ms: float = 0.0
    shadow: dict[str, float] = field(default_factory=dict)  # shadow work by result (done, dropped, failed)


@dataclass(frozen=True)
class _Pass:
    seconds: float
    latencies_ms: list[float]
    run: evaluation.Run
    fractions: list[float]
    fallbacks: int


async def _closed_loop(
    url: str, index: str, queries: Sequence[tuple[str, str]], clients: int, depth: int, think_s: float = 0.0
) -> _Pass:
    """Each client sends the next query as soon as its last one is answered (or ``think_s`` after it, as a user
    reading the results would), until every query is sent once."""
    todo = list(queries)
    run: evaluation.Run = {}
    latencies: list[float] = []
    fractions: list[float] = []
    fallbacks = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal fallbacks
        while todo:
            qid, text = todo.pop(0)
            body = {"query": {"multi_match": {"query": text, "fields": ["title", "text"]}}, "size": depth}
            body["_source"] = False
            start = time.perf_counter()
            async with session.post(f"{url}/{index}/_search", json=body) as resp:
                reply = await resp.json()
                header = resp.headers.get("X-Rerank", "")
            latencies.append((time.perf_counter() - start) * 1000)
            hits = reply["hits"]["hits"]
            run[qid] = {h["_id"]: float(len(hits) - i) for i, h in enumerate(hits)}
            if header.startswith("fallback"):
                fallbacks += 1
            if m := _WINDOW.search(header):
                fractions.append(int(m.group(1)) / max(1, int(m.group(2))))
            if think_s:
                await asyncio.sleep(think_s)

    start = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return _Pass(time.perf_counter() - start, latencies, run, fractions, fallbacks)


def setups(
    bi_encoder: str, cross_encoder: str, budget_ms: float, store: Path, *, trained: bool = False
) -> dict[str, Setup]:
    """The whole window, a budget, a cascade, a warm store, and the cascade over the warm store."""
    models = {"models": {"bi": {"path": bi_encoder}, "ce": {"path": cross_encoder}}}
    cascade = [{"model": "bi", "window_size": 100}, {"model": "ce", "window_size": 20}]
    second = "cross-encoder (distilled)" if trained else "cross-encoder, untrained head: real latency, not quality"
    stored = {**models, "embedding_store": str(store)}
    return {
        "full": Setup("full", {}, note="bi-encoder, whole window, as without a budget"),
        "budget": Setup("budget", {"rerank_budget_ms": budget_ms}, note=f"bi-encoder, {budget_ms:.0f} ms budget"),
        "cascade": Setup("cascade", {"stages": cascade, "rerank_budget_ms": budget_ms}, models, note=second),
        "store": Setup(
            "store",
            {"rerank_budget_ms": budget_ms},
            {"embedding_store": str(store)},
            note=f"bi-encoder, warm embedding store, {budget_ms:.0f} ms budget",
            warm=True,
        ),
        "cascade-store": Setup(
            "cascade-store",
            {"stages": cascade, "rerank_budget_ms": budget_ms},
            stored,
            note=f"bi-encoder from the warm store, then {second}",
            warm=True,
        ),
        # shadow mode's cost: the engine's order served, 10% of searches reranked afterwards, against 0%
        "shadow-off": Setup("shadow-off", {"mode": "shadow", "shadow_sample": 0.0}, note="shadow mode, sample 0"),
        "shadow": Setup("shadow", {"mode": "shadow", "shadow_sample": 0.1}, note="shadow mode, sample 0.1"),
    }


@contextmanager
def _sidecar(engine: str, folder: Path, index: str, setup: Setup, model: str, precision: str) -> Iterator[str]:
    from sidecar.tools.launch import serve_process

    rule = {"index": index, "fields": ["title", "text"], "window_size": 100, **setup.rule}
    config = folder / f"bench-load-{setup.name}.yaml"
    # No score cache, and no embeddings kept in memory unless the setup is about a store: else every row after
    # the first client count would be served from what the first one computed.
    caches = {"score_cache_entries": 0, "embedding_cache_mb": 512 if setup.warm else 0}
    settings = {"rules": [rule], "rerank_timeout_ms": 120_000, **caches, **setup.settings}
    config.write_text(yaml.safe_dump(settings))
    if setup.warm:
        _warm(engine, index, config, model, precision)
    try:
        with serve_process(
            engine, "--config", str(config), "--model", model, "--precision", precision, ready_path="/_sidecar/ready"
        ) as (_, url):
            yield url
    finally:
        config.unlink(missing_ok=True)


def _warm(engine: str, index: str, config: Path, model: str, precision: str) -> None:
    from sidecar.config import Settings
    from sidecar.tools.warm import warm

    settings = Settings(config=config, upstream=engine, model=model, precision=precision)
    done = warm(settings, index, fields=("title", "text"), model=None, batch=256)
    print(f"  warmed: {done.embedded} embedded, {done.skipped} already held", flush=True)


def measure(
    engine: str,
    dataset: Path,
    setups: Sequence[Setup],
    levels: Sequence[int],
    *,
    model: str,
    precision: str,
    queries: int | None,
    workdir: Path,
    repeat: int = 1,
    think_ms: float = 0.0,
) -> tuple[float, list[Row]]:
    """(nDCG@10 of the engine alone, one row per setup and client count); each query is sent ``repeat`` times,
    each client pausing ``think_ms`` between a reply and its next request."""
    judgments = datasets.qrels(dataset)
    asked = [(q, t) for q, t in datasets.queries(dataset).items() if q in judgments][:queries] * repeat
    index = f"bench-load-{dataset.name}".lower()
    index_dataset(EngineClient(engine), index, dataset)
    workdir.mkdir(parents=True, exist_ok=True)
    direct = {n: asyncio.run(_closed_loop(engine, index, asked, n, 100)) for n in levels}
    bm25 = evaluation.measure(judgments, direct[levels[0]].run, 2).mean["nDCG@10"]
    rows = []
    for setup in setups:
        with _sidecar(engine, workdir, index, setup, model, precision) as url:
            for n in levels:
                base = asyncio.run(_closed_loop(engine, index, asked, n, 100, think_ms / 1000))  # the engine alone
                before = counter(url, "sidecar_shadow")
                via = asyncio.run(_closed_loop(url, index, asked, n, 100, think_ms / 1000))
                shadow = _settled_shadow(url, before) if setup.rule.get("mode") == "shadow" else {}
                rows.append(
                    Row(
                        setup.name,
                        n,
                        len(asked) / via.seconds,
                        percentile(via.latencies_ms, 50) - percentile(base.latencies_ms, 50),
                        percentile(via.latencies_ms, 99) - percentile(base.latencies_ms, 99),
                        statistics.mean(via.fractions) if via.fractions else 0.0,
                        via.fallbacks,
                        evaluation.measure(judgments, via.run, 2).mean["nDCG@10"],
                        setup.note,
                        via.run,
                        percentile(via.latencies_ms, 50),
                        percentile(via.latencies_ms, 99),
                        shadow,
                    )
                )
                print(f"  {setup.name}, {n} clients: {rows[-1].ndcg10:.4f} nDCG@10", flush=True)
    return bm25, rows


def _settled_shadow(
    url: str, before: dict[str, float], quiet_s: float = 1.0, limit_s: float = 120.0
) -> dict[str, float]:
    """Shadow work by result since ``before``, once the counts have stopped moving (the last reranks finish after
    the last reply)."""
    start, last, still = time.monotonic(), counter(url, "sidecar_shadow"), time.monotonic()
    while time.monotonic() - still < quiet_s and time.monotonic() - start < limit_s:
        time.sleep(0.2)
        now = counter(url, "sidecar_shadow")
        if now != last:
            last, still = now, time.monotonic()
    return {k: v - before.get(k, 0.0) for k, v in last.items()}


def shadow_report(rows: Sequence[Row]) -> str:
    """Served latency with shadow sampling against shadow off at each client count, and the shadow work's fate.

    Each setup may run several times (``--setups shadow-off,shadow,shadow-off,shadow``: alternating rounds, so that
    the machine's drift falls on both): the comparison takes the median of each setup's rounds, and the work
    is summed over them."""
    by: dict[tuple[str, int], list[Row]] = {}
    for r in rows:
        by.setdefault((r.setup, r.clients), []).append(r)
    lines = []
    for (setup, clients), shadow in by.items():
        off = by.get(("shadow-off", clients))
        if setup != "shadow" or not off:
            continue
        p50, p99 = (statistics.median(getattr(r, f) for r in shadow) for f in ("served_p50_ms", "served_p99_ms"))
        o50, o99 = (statistics.median(getattr(r, f) for r in off) for f in ("served_p50_ms", "served_p99_ms"))
        work: dict[str, float] = {}
        for r in shadow:
            for k, v in r.shadow.items():
                work[k] = work.get(k, 0.0) + v
        done = ", ".join(f"{k} {v:.0f}" for k, v in sorted(work.items())) or "none"
        rounds = f" (median of {len(shadow)} rounds each)" if len(shadow) > 1 or len(off) > 1 else ""
        lines.append(
            f"shadow 0.1 vs off at {clients} clients{rounds}: served p50 {p50:.0f} vs {o50:.0f} ms "
            f"({p50 / max(o50, 1e-9):.2f}x), p99 {p99:.0f} vs {o99:.0f} ms ({p99 / max(o99, 1e-9):.2f}x); "
            f"shadow work: {done}"
        )
    return "\n".join(lines)


def report(dataset: str, bm25: float, rows: Sequence[Row]) -> str:
    header = ["setup", "clients", "req/s", "added p50 ms", "added p99 ms", "reranked", "fallbacks", "nDCG@10", "note"]
    body = [
        [
            r.setup,
            r.clients,
            f"{r.rps:.2f}",
            f"{r.added_p50_ms:.0f}",
            f"{r.added_p99_ms:.0f}",
            f"{r.reranked:.0%}",
            r.fallbacks,
            f"{r.ndcg10:.4f}",
            r.note,
        ]
        for r in rows
    ]
    return f"{dataset}: the engine alone (osmem BM25) serves nDCG@10 {bm25:.4f}\n\n" + table(header, body)
