"""`rerank-sidecar bench proxy|scorer|load|remote`: benchmarks against a named baseline, printed as ratios."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from sidecar.commands.errors import UsageError
from sidecar.tools.embedded import DISTILLED, engine_at, packaged_model

_CROSS_ENCODER = (
    f"the MiniLM-L6 cross-encoder measured (default: {DISTILLED} when `distill` has built it, else a fresh "
    "untrained head: its speed is real, its quality is not)"
)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("bench", help="benchmarks (ours vs a baseline, one run)")
    kinds = parser.add_subparsers(dest="bench", required=True)

    proxy = kinds.add_parser("proxy", help="small _search requests: engine directly vs through the sidecar")
    proxy.add_argument("--engine", help="engine URL (default: start the embedded osmem engine)")
    proxy.add_argument("--clients", default="1,16,64", help="comma-separated concurrency levels")
    proxy.add_argument("--requests", type=int, default=3000, help="requests per target, level and round")
    proxy.add_argument("--rounds", type=int, default=2, help="rounds per level of direct, bare forwarder, sidecar")
    proxy.add_argument("--model", help="model the sidecar loads (default: the packaged all-MiniLM-L6-v2)")
    proxy.set_defaults(run=run_proxy)

    scorer = kinds.add_parser("scorer", help="our scorer vs sentence-transformers CrossEncoder.predict")
    scorer.add_argument("--data", type=Path, help="folder holding trec_dl19/ (default: $SIDECAR_DATA_DIR)")
    scorer.add_argument("--queries", type=int, help="use the first N queries (default: all 43)")
    scorer.add_argument("--rounds", type=int, default=1, help="alternating rounds of each engine")
    scorer.add_argument(
        "--precision",
        default="auto,fp32,int8",
        help="our contenders, comma-separated: a precision (auto: the CPU table's pick; others on torch) or "
        "backend:precision (onnx:int8, openvino:fp32)",
    )
    scorer.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (as the sidecar's --device)")
    scorer.add_argument("--batch-tokens", type=int, help="padded tokens per model batch (default: by device)")
    scorer.add_argument("--clients", default="1,4,16", help="concurrency levels for the latency table")
    scorer.add_argument("--latency-queries", type=int, default=16, help="top-100 requests per latency level")
    scorer.add_argument("--cross-encoder", type=Path, help=_CROSS_ENCODER)
    scorer.add_argument("--work", type=Path, default=Path.home() / ".cache" / "rerank-sidecar" / "bench-minilm-ce")
    scorer.set_defaults(run=run_scorer)

    load = kinds.add_parser("load", help="quality under load: judged queries through serve, 1/4/16 clients")
    load.add_argument("--data", type=Path, help="folder holding the dataset (default: $SIDECAR_DATA_DIR)")
    load.add_argument("--dataset", default="trec_dl19", help="a TREC DL folder (default: %(default)s)")
    load.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    load.add_argument(
        "--setups",
        default="full,budget,cascade,store,cascade-store",
        help="which ones, in order (also: shadow-off,shadow)",
    )
    load.add_argument("--budget-ms", type=float, default=300, help="the latency budget (default: %(default)s)")
    load.add_argument("--queries", type=int, help="only the first N judged queries")
    load.add_argument("--repeat", type=int, default=1, help="send each query this many times per pass")
    load.add_argument("--think-ms", type=float, default=0, help="each client's pause between a reply and its next")
    load.add_argument("--precision", default="auto", help="serving precision (default: %(default)s)")
    load.add_argument("--cross-encoder", type=Path, help=_CROSS_ENCODER)
    load.add_argument("--work", type=Path, default=Path.home() / ".cache" / "rerank-sidecar" / "bench-load")
    load.set_defaults(run=run_load)

    remote = kinds.add_parser("remote", help="top-100 reranks in this process vs through a second sidecar")
    remote.add_argument("--data", type=Path, help="folder holding trec_dl19/ (default: $SIDECAR_DATA_DIR)")
    remote.add_argument("--queries", type=int, default=20, help="the first N queries (default: %(default)s)")
    remote.add_argument("--rounds", type=int, default=2, help="passes over the queries (default: %(default)s)")
    remote.add_argument("--cross-encoder", type=Path, help=_CROSS_ENCODER)
    remote.add_argument("--work", type=Path, default=Path.home() / ".cache" / "rerank-sidecar" / "bench-minilm-ce")
    remote.set_defaults(run=run_remote)


def run_scorer(args: argparse.Namespace) -> int:
    from sidecar.tools.bench import scorer
    from sidecar.tools.datasets import candidates, default_data_dir

    folder = (args.data or default_data_dir()) / "trec_dl19"
    if not (folder / "bm25_top100.jsonl").exists():
        raise UsageError(f"bench scorer: {folder}/bm25_top100.jsonl not found; pass --data")
    model, trained = scorer.cross_encoder(args.cross_encoder, args.work)
    print(f"cross-encoder: {model} ({'trained' if trained else 'untrained head: speed only'})", flush=True)
    rows = candidates(folder)
    requests = scorer.requests_from(rows, args.queries)
    print(scorer.describe(requests, model), flush=True)
    print(scorer.cpu_line(), flush=True)
    contenders = scorer.parse_contenders(args.precision)
    speeds, baseline_s = scorer.throughput(
        model, requests, contenders, args.rounds, device=args.device, batch_tokens=args.batch_tokens
    )
    print(speeds)
    if scorer.on_cpu(args.device):  # the fp32 floor is this CPU's GEMM rate
        print(scorer.compute_floor(model, requests, baseline_s), flush=True)
    levels = [int(c) for c in args.clients.split(",")]
    print(scorer.latency(model, scorer.requests_from(rows, args.latency_queries), levels, (0, 5), args.device))
    return 0


def run_remote(args: argparse.Namespace) -> int:
    from sidecar.tools.bench import remote, scorer
    from sidecar.tools.datasets import candidates, default_data_dir
    from sidecar.tools.launch import serve_process

    folder = (args.data or default_data_dir()) / "trec_dl19"
    if not (folder / "bm25_top100.jsonl").exists():
        raise UsageError(f"bench remote: {folder}/bm25_top100.jsonl not found; pass --data")
    model, _ = scorer.cross_encoder(args.cross_encoder, args.work)
    requests = scorer.requests_from(candidates(folder), args.queries)
    print(scorer.describe(requests, model), flush=True)
    with (
        engine_at(None) as engine,
        serve_process(engine.url, *remote.SERVER_FLAGS, "--model", model, ready_path="/_sidecar/ready") as (_, url),
    ):
        print(f"remote: a second sidecar process at {url} with the same model; one rerank in flight", flush=True)
        took = asyncio.run(remote.measure(model, url, requests, args.rounds))
        remote.check_no_cache_hits(url)
    print(remote.report(took))
    return 0


def run_load(args: argparse.Namespace) -> int:
    from sidecar.tools.bench import load, scorer
    from sidecar.tools.datasets import default_data_dir

    folder = (args.data or default_data_dir()) / args.dataset
    if not (folder / "qrels.txt").exists():
        raise UsageError(f"bench load: {folder}/qrels.txt not found; pass --data")
    cross, trained = scorer.cross_encoder(args.cross_encoder, args.work / "minilm-ce")
    store = args.work / f"embeddings-{args.precision}.sqlite"
    known = load.setups(str(packaged_model()), cross, args.budget_ms, store, trained=trained)
    chosen = [known[name] for name in args.setups.split(",") if name in known]
    if not chosen:
        raise UsageError(f"bench load: --setups takes some of {', '.join(known)}")
    levels = [int(c) for c in args.clients.split(",")]
    with engine_at(None) as engine:
        bm25, rows = load.measure(
            engine.url,
            folder,
            chosen,
            levels,
            model=str(packaged_model()),
            precision=args.precision,
            queries=args.queries,
            workdir=args.work,
            repeat=args.repeat,
            think_ms=args.think_ms,
        )
    print(load.report(folder.name, bm25, rows))
    if shadow := load.shadow_report(rows):
        print("\n" + shadow)
    return 0


def run_proxy(args: argparse.Namespace) -> int:
    from sidecar.tools.bench import proxy
    from sidecar.tools.launch import serve_process

    model = args.model or str(packaged_model())
    levels = [int(c) for c in args.clients.split(",")]
    with engine_at(args.engine) as engine:
        bodies = proxy.prepare(engine.url)
        print(f"engine {engine.url}, {len(bodies)} distinct search bodies; sidecar is its own process", flush=True)
        with serve_process(engine.url, "--model", model, ready_path="/_sidecar/ready") as (proc, sidecar):
            pids = {"engine": engine.pid, "sidecar": proc.pid, "client": None}
            if engine.pid is None:  # an engine of the user's: its CPU is not ours to read
                del pids["engine"]
            runs = asyncio.run(
                _proxy_runs(proxy, engine.url, sidecar, bodies, levels, args.requests, args.rounds, pids)
            )
    print(proxy.report(runs))
    return 0


async def _proxy_runs(
    proxy: Any,
    engine: str,
    sidecar: str,
    bodies: list[bytes],
    levels: list[int],
    requests: int,
    rounds: int,
    pids: dict[str, int | None],
) -> list[Any]:
    runs = []
    targets = {"direct": engine, "sidecar": sidecar}
    for clients in levels:
        for name, url in targets.items():
            await proxy.drive(url, bodies, clients, min(requests, 300), name)  # warm-up, not counted
        for _ in range(rounds):
            for name, url in targets.items():
                run = await proxy.measured(url, bodies, clients, requests, name, pids)
                print(f"  {name:7} {clients:3} clients: {run.rps:7.0f} req/s  p50 {run.p(50):.2f} ms", flush=True)
                runs.append(run)
    return runs
