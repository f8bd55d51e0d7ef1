"""`rerank-sidecar eval DATASET_DIR`: how much reranking helps on judged data, end to end or on given candidates."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, get_args

import yaml
from tqdm import tqdm

from sidecar.commands.errors import UsageError, reading
from sidecar.config import ScoringOptions, Settings
from sidecar.tools import datasets, evaluation
from sidecar.tools.bench.stats import percentile
from sidecar.tools.embedded import engine_at, packaged_model
from sidecar.tools.engine_client import EngineClient
from sidecar.tools.indexing import index_dataset


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("eval", help="measure ranking quality: engine vs reranked")
    parser.add_argument("dataset", type=Path, help="folder with corpus.jsonl, queries.tsv, qrels.txt")
    parser.add_argument("--candidates", action="store_true", help="rerank bm25_top100.jsonl (no engine)")
    parser.add_argument("--engine", help="engine URL for end-to-end mode (default: start the embedded osmem)")
    parser.add_argument("--model", help="model path or hub id (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument(
        "--precision",
        choices=get_args(Settings.model_fields["precision"].annotation),
        default=Settings.model_fields["precision"].default,
        help=Settings.model_fields["precision"].description,
    )
    parser.add_argument("--config", type=Path, help="sidecar config for end-to-end mode (default: one rule)")
    parser.add_argument("--index", help="index for the corpus (default: eval-<dataset>)")
    parser.add_argument("--depth", type=int, default=100, help="candidates per query (the rerank window)")
    parser.add_argument("--rel", type=int, help="lowest relevant grade for MRR/Recall (default: 2 for TREC DL, else 1)")
    parser.add_argument("--queries", type=int, help="only the first N judged queries")
    parser.add_argument("--out", type=Path, help="output folder (default: eval-out/<dataset>)")
    for name in ("score_mode", "combine_mode", "normalization", "query_weight", "rerank_weight"):
        field = ScoringOptions.model_fields[name]
        choices = get_args(field.annotation) or None
        kind = float if field.annotation is float else str
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=kind, choices=choices, default=field.default, help=field.description)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    folder: Path = args.dataset
    if not (folder / "qrels.txt").exists() or not (folder / "queries.tsv").exists():
        raise UsageError(f"eval: {folder} has no qrels.txt and queries.tsv")
    with reading(folder):
        judgments = datasets.qrels(folder)
        queries = {q: t for q, t in datasets.queries(folder).items() if q in judgments}
    if args.queries:
        queries = dict(list(queries.items())[: args.queries])
    rel = args.rel if args.rel is not None else (2 if folder.name.startswith("trec_dl") else 1)
    out = args.out or Path("eval-out") / folder.name
    model = args.model or str(packaged_model())
    if args.candidates:
        scoring = _scoring(args)
        baseline, reranked, took = evaluation.rerank_candidates(
            folder, queries, model, args.depth, args.precision, scoring
        )
        mode = "candidates"
    else:
        baseline, reranked, took = _end_to_end(folder, queries, model, args, out)
        mode = "end-to-end"
    base_m, rer_m = evaluation.measure(judgments, baseline, rel), evaluation.measure(judgments, reranked, rel)
    latency = {"p50": percentile(took, 50), "p99": percentile(took, 99)}
    info = {
        "dataset": folder.name,
        "mode": mode,
        "model": model,
        "precision": args.precision,
        "queries": len(queries),
        "relevant_grade": rel,
        "scoring": _scoring(args).model_dump(exclude={"min_score"}),
    }
    rep = evaluation.report(base_m, rer_m, latency, info)
    evaluation.save(rep, out)
    evaluation.write_trec(baseline, out / "baseline.trec", "baseline")
    evaluation.write_trec(reranked, out / "reranked.trec", "reranked")
    evaluation.plot_deltas(base_m, rer_m, out / "ndcg10_deltas.png", f"{folder.name} ({mode})")
    print(f"\n{folder.name}, {mode}, {len(queries)} queries, model {model} ({args.precision})\n")
    print(evaluation.table(rep))
    print(f"\nwrote {out}/report.json, baseline.trec, reranked.trec, ndcg10_deltas.png")
    return 0


def _end_to_end(
    folder: Path, queries: dict[str, str], model: str, args: argparse.Namespace, out: Path
) -> tuple[evaluation.Run, evaluation.Run, list[float]]:
    from sidecar.tools.launch import serve_process

    index = args.index or f"eval-{folder.name}".lower()
    with engine_at(args.engine) as engine:
        client = EngineClient(engine.url)
        index_dataset(client, index, folder)
        config = args.config or _rule_file(out, index, args.depth, _scoring(args))
        with serve_process(
            engine.url,
            "--config",
            str(config),
            "--model",
            model,
            "--precision",
            args.precision,
            ready_path="/_sidecar/ready",
        ) as (
            _,
            sidecar,
        ):
            proxy = EngineClient(sidecar)
            baseline, reranked, took = {}, {}, []
            for qid, text in tqdm(queries.items(), desc="searching", unit="query"):
                body = {"query": {"multi_match": {"query": text, "fields": ["title", "text"]}}, "size": args.depth}
                body["_source"] = False
                baseline[qid] = _ranked(client.request("POST", f"/{index}/_search", body))
                start = time.perf_counter()
                reranked[qid] = _ranked(proxy.request("POST", f"/{index}/_search", body))
                took.append((time.perf_counter() - start) * 1000)
    return baseline, reranked, took


def _scoring(args: argparse.Namespace) -> ScoringOptions:
    names = ("score_mode", "combine_mode", "normalization", "query_weight", "rerank_weight")
    return ScoringOptions(**{name: getattr(args, name) for name in names})


def _ranked(reply: dict[str, Any]) -> dict[str, float]:
    hits = reply["hits"]["hits"]
    return {h["_id"]: float(len(hits) - i) for i, h in enumerate(hits)}


def _rule_file(out: Path, index: str, depth: int, scoring: ScoringOptions) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sidecar.yaml"
    rule = {"index": index, "fields": ["title", "text"], "window_size": depth, **scoring.model_dump()}
    path.write_text(yaml.safe_dump({"rules": [rule]}))
    return path
