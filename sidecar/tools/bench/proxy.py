"""`bench proxy`: the same small `_search` mix against the engine directly, through a bare aiohttp forwarder and
through the sidecar, one run.

The bare forwarder (``bare_forwarder.py``) is the floor: what forwarding alone costs a Python process on this
machine, so that the sidecar's CPU per request reads as a ratio that holds between machines. The searches name
an index that no rule covers and carry no rerank syntax: they take the sidecar's search interception path
(read, scan, pass through), which each reply's X-Rerank header confirms.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp

from sidecar.tools.bench.bare_forwarder import bare_forwarder_process
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
    rerank: dict[str, int] = field(default_factory=dict)  # replies by X-Rerank header value ("-": none)
    baselines: tuple[Run, ...] = ()  # measured with this run: the bare forwarder's, after a direct run

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
    """``drive`` plus the CPU time each process (engine, sidecar, this load generator as None) spent on it.

    A direct run is followed by the bare forwarder's, in front of the same engine and measured the same way
    (its own process, started for the round and warmed up like the others); it comes back in ``baselines``.
    So every round measures direct, bare and sidecar one after the other, and the sidecar's CPU is compared
    with a floor measured minutes, not runs, apart.
    """
    run = await _measured(url, bodies, clients, total, target, pids)
    if target != "direct":
        return run
    with bare_forwarder_process(url) as (proc, bare_url):
        await drive(bare_url, bodies, clients, min(total, 300), "bare")  # warm-up, not counted
        bare = await _measured(bare_url, bodies, clients, total, "bare", {**pids, "bare": proc.pid})
    return replace(run, baselines=(bare,))


async def _measured(
    url: str, bodies: list[bytes], clients: int, total: int, target: str, pids: Mapping[str, int | None]
) -> Run:
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
    rerank: Counter[str] = Counter()
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
                    rerank[r.headers.get("X-Rerank", "-")] += 1
                latencies.append((time.perf_counter() - start) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        seconds = time.perf_counter() - start
    return Run(target, clients, total, errors, seconds, latencies, rerank=dict(rerank))


def report(runs: list[Run]) -> str:
    runs = [x for r in runs for x in (r, *r.baselines)]
    rows = []
    for clients in sorted({r.clients for r in runs}):
        direct = _merge([r for r in runs if r.clients == clients and r.target == "direct"])
        proxied = _merge([r for r in runs if r.clients == clients and r.target == "sidecar"])
        bare = [r for r in runs if r.clients == clients and r.target == "bare"]
        floor = [f"{_merge(bare).rps:.0f}", f"{_merge(bare).p(50):.2f} / {_merge(bare).p(99):.2f}"] if bare else []
        rows.append(
            [
                clients,
                f"{direct.rps:.0f}",
                f"{proxied.rps:.0f}",
                f"{proxied.rps / direct.rps:.2f}x",
                f"{direct.p(50):.2f} / {direct.p(99):.2f}",
                f"{proxied.p(50):.2f} / {proxied.p(99):.2f}",
                f"{proxied.p(50) - direct.p(50):+.2f}",
                *floor,
                direct.errors + proxied.errors + sum(r.errors for r in bare),
            ]
        )
    header = ["clients", "direct req/s", "sidecar req/s", "ratio", "direct p50/p99 ms", "sidecar p50/p99 ms"]
    header += ["added p50 ms", *(["bare req/s", "bare p50/p99 ms"] if any(r.target == "bare" for r in runs) else [])]
    parts = [table([*header, "errors"], rows), cpu_report(runs), proxy_cpu_report(runs), rerank_report(runs)]
    return "\n\n".join(p for p in parts if p)


def cpu_report(runs: list[Run]) -> str:
    """CPU ms per request of each process. With every core busy, throughput is cores / CPU per request, so the
    ratio of the totals (direct / through the sidecar) is the best ratio this machine allows."""
    runs = [r for r in runs if r.target in ("direct", "sidecar")]
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


def proxy_cpu_report(runs: list[Run]) -> str:
    """The proxy's own CPU ms per request, the sidecar's against the bare forwarder's: the ratio of the totals,
    and the spread of the ratios of single rounds (in each, bare and sidecar run back to back). The engine's CPU
    per request through each shows that both proxies asked it for the same work. /proc counts CPU in ticks of
    10 ms: runs of a few thousand requests read it to a few percent."""
    rows = []
    for clients in sorted({r.clients for r in runs}):
        sidecar = [r for r in runs if r.clients == clients and r.target == "sidecar"]
        bare = [r for r in runs if r.clients == clients and r.target == "bare"]
        if not sidecar or not bare:
            continue
        ours, floor = _cpu_ms(sidecar, "sidecar"), _cpu_ms(bare, "bare")
        rounds = [_ratio(_cpu_ms([s], "sidecar"), _cpu_ms([b], "bare")) for s, b in zip(sidecar, bare, strict=False)]
        known = [x for x in rounds if x is not None]
        spread = f"{min(known):.2f} / {statistics.median(known):.2f} / {max(known):.2f}" if known else "-"
        engine = "-"
        if "engine" in bare[0].cpu_s:
            engine = f"{_cpu_ms(sidecar, 'engine'):.2f} / {_cpu_ms(bare, 'engine'):.2f}"
        ratio = _ratio(ours, floor)
        rows.append([clients, f"{ours:.3f}", f"{floor:.3f}", "-" if ratio is None else f"{ratio:.2f}x", spread, engine])
    if not rows:
        return ""
    header = ["clients", "sidecar CPU ms/req", "bare forwarder CPU ms/req", "sidecar / bare"]
    return table([*header, "per round min / median / max", "engine CPU ms/req via sidecar / via bare"], rows)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def rerank_report(runs: list[Run]) -> str:
    """What the sidecar did with the searches, by its replies' X-Rerank header."""
    seen: Counter[str] = Counter()
    for r in runs:
        if r.target == "sidecar":
            seen.update(r.rerank)
    return "sidecar replies by X-Rerank: " + ", ".join(f"{k} x{n}" for k, n in seen.most_common()) if seen else ""


def _cpu_ms(runs: list[Run], name: str) -> float:
    return sum(r.cpu_s.get(name, 0.0) for r in runs) * 1000 / sum(r.requests for r in runs)


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
