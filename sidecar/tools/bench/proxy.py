"""`bench proxy`: the same small `_search` mix against the engine directly and through the sidecar, one run."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp

from sidecar.tools.bench.stats import percentile, table
from sidecar.tools.corpus import stdlib_docstrings
from sidecar.tools.engine_client import EngineClient
from sidecar.tools.indexing import index_docs

INDEX = "bench-proxy"


@dataclass(frozen=True)
class Run:
    target: str
    clients: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds each process spent on the run

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (Linux /proc); the load generator's own is ``time.process_time``."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measured(
    url: str, bodies: list[bytes], clients: int, total: int, target: str, pids: Mapping[str, int | None]
) -> Run:
    """``drive`` plus the CPU time each process (engine, sidecar, this load generator as None) spent on it."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    run = await drive(url, bodies, clients, total, target)
    return replace(run, cpu_s={name: cpu_seconds(pid) - before[name] for name, pid in pids.items()})


def prepare(engine: str, seed: int = 7) -> list[bytes]:
    """Index the standard library's docstrings; return small `_search` bodies built from their words."""
    client = EngineClient(engine)
    docs = list(stdlib_docstrings())
    index_docs(client, INDEX, docs)
    rng = random.Random(seed)
    words = [w for d in docs for w in d["text"].split()[:20] if w.isalpha() and len(w) > 3]
    bodies = []
    for i in range(500):
        text = " ".join(rng.sample(words, 3))
        query: dict[str, object] = {"match": {"text": text}}
        if i % 3 == 1:
            query = {"multi_match": {"query": text, "fields": ["title^2", "text"]}}
        elif i % 3 == 2:
            query = {"bool": {"must": [{"match": {"text": text}}], "filter": [{"exists": {"field": "title"}}]}}
        bodies.append(json.dumps({"query": query, "size": 10, "_source": ["title"]}).encode())
    return bodies


async def drive(url: str, bodies: list[bytes], clients: int, total: int, target: str) -> Run:
    """``clients`` concurrent keep-alive clients send ``total`` searches between them."""
    latencies: list[float] = []
    errors = 0
    counter = itertools.count()
    headers = {"Content-Type": "application/json"}
    search_url = f"{url}/{INDEX}/_search"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def client() -> None:
            nonlocal errors
            while (i := next(counter)) < total:
                start = time.perf_counter()
                async with session.post(search_url, data=bodies[i % len(bodies)], headers=headers) as r:
                    await r.read()
                    errors += r.status != 200
                latencies.append((time.perf_counter() - start) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        seconds = time.perf_counter() - start
    return Run(target, clients, total, errors, seconds, latencies)


def report(runs: list[Run]) -> str:
    rows = []
    for clients in sorted({r.clients for r in runs}):
        direct = _merge([r for r in runs if r.clients == clients and r.target == "direct"])
        proxied = _merge([r for r in runs if r.clients == clients and r.target == "sidecar"])
        rows.append(
            [
                clients,
                f"{direct.rps:.0f}",
                f"{proxied.rps:.0f}",
                f"{proxied.rps / direct.rps:.2f}x",
                f"{direct.p(50):.2f} / {direct.p(99):.2f}",
                f"{proxied.p(50):.2f} / {proxied.p(99):.2f}",
                f"{proxied.p(50) - direct.p(50):+.2f}",
                direct.errors + proxied.errors,
            ]
        )
    header = ["clients", "direct req/s", "sidecar req/s", "ratio", "direct p50/p99 ms", "sidecar p50/p99 ms"]
    return table([*header, "added p50 ms", "errors"], rows) + "\n\n" + cpu_report(runs)


def cpu_report(runs: list[Run]) -> str:
    """CPU ms per request of each process. With every core busy, throughput is cores / CPU per request, so the
    ratio of the totals (direct / through the sidecar) is the best ratio this machine allows."""
    names = sorted({n for r in runs for n in r.cpu_s})
    if not names:
        return ""
    rows = []
    for clients in sorted({r.clients for r in runs}):
        per = {}
        for target in ("direct", "sidecar"):
            merged = [r for r in runs if r.clients == clients and r.target == target]
            n = sum(r.requests for r in merged)
            per[target] = {name: sum(r.cpu_s.get(name, 0.0) for r in merged) * 1000 / n for name in names}
        cells = [f"{per['direct'][n]:.2f} / {per['sidecar'][n]:.2f}" for n in names]
        bound = sum(per["direct"].values()) / sum(per["sidecar"].values())
        rows.append([clients, *cells, f"{bound:.2f}x"])
    return table(["clients", *(f"{n} CPU ms/req direct / via" for n in names), "CPU-bound ratio"], rows)


def _merge(runs: list[Run]) -> Run:
    return Run(
        runs[0].target,
        runs[0].clients,
        sum(r.requests for r in runs),
        sum(r.errors for r in runs),
        sum(r.seconds for r in runs),
        [x for r in runs for x in r.latencies_ms],
        {n: sum(r.cpu_s.get(n, 0.0) for r in runs) for n in runs[0].cpu_s},
    )
