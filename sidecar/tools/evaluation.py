"""Ranking quality: runs, metrics (ir-measures), a paired significance test, and the report files."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.config import ScoringOptions
from sidecar.tools import datasets
from sidecar.tools.datasets import Judgments

Run = dict[str, dict[str, float]]
Score = Callable[[str, list[str]], list[float]]  # query, texts -> one score per text


@dataclass(frozen=True)
class Measures:
    """Per-query and mean figures of one run."""

    mean: dict[str, float]
    per_query: dict[str, dict[str, float]]


def measure(judgments: Judgments, run: Run, rel: int) -> Measures:
    """nDCG@10 (graded), MRR@10 and Recall@100 (relevant = grade >= ``rel``), over the judged queries."""
    import ir_measures
    from ir_measures import RR, R, nDCG

    names = {nDCG @ 10: "nDCG@10", RR(rel=rel) @ 10: "MRR@10", R(rel=rel) @ 100: "Recall@100"}
    judged = {q: d for q, d in judgments.items() if q in run}
    per_query: dict[str, dict[str, float]] = {}
    for m in ir_measures.iter_calc(list(names), judged, {q: run[q] for q in judged}):
        per_query.setdefault(m.query_id, {})[names[m.measure]] = float(m.value)
    agg = ir_measures.calc_aggregate(list(names), judged, {q: run[q] for q in judged})
    return Measures({names[k]: float(v) for k, v in agg.items()}, per_query)


def paired_test(a: Measures, b: Measures, metric: str = "nDCG@10") -> dict[str, float]:
    """Two-sided paired t-test and Wilcoxon signed-rank test over the queries both runs answered."""
    from scipy import stats

    queries = sorted(set(a.per_query) & set(b.per_query))
    x = [a.per_query[q][metric] for q in queries]
    y = [b.per_query[q][metric] for q in queries]
    t = stats.ttest_rel(y, x)
    differs = any(i != j for i, j in zip(x, y, strict=True))
    w = stats.wilcoxon(y, x) if differs else None
    return {
        "queries": len(queries),
        "t": float(t.statistic) if differs else 0.0,
        "p_ttest": float(t.pvalue) if differs else 1.0,
        "p_wilcoxon": float(w.pvalue) if w is not None else 1.0,
    }


def write_trec(run: Run, path: Path, tag: str) -> None:
    lines = []
    for qid, docs in run.items():
        ranked = sorted(docs.items(), key=lambda kv: kv[1], reverse=True)
        lines += [f"{qid} Q0 {doc} {rank} {score:.6f} {tag}" for rank, (doc, score) in enumerate(ranked, 1)]
    path.write_text("\n".join(lines) + "\n")


def plot_deltas(baseline: Measures, reranked: Measures, path: Path, title: str, metric: str = "nDCG@10") -> None:
    """Per-query change of ``metric``, sorted: one bar per query, green where reranking helped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    queries = sorted(set(baseline.per_query) & set(reranked.per_query))
    deltas = sorted(reranked.per_query[q][metric] - baseline.per_query[q][metric] for q in queries)
    fig, ax = plt.subplots(figsize=(9, 4), dpi=120)
    ax.bar(range(len(deltas)), deltas, color=["#2a9d8f" if d > 0 else "#e76f51" for d in deltas], width=0.9)
    ax.axhline(0, color="black", linewidth=0.8)
    mean = reranked.mean[metric] - baseline.mean[metric]
    ax.set_title(f"{title}: per-query {metric} change (mean {mean:+.3f})")
    ax.set_xlabel(f"queries, sorted by change ({len(deltas)})")
    ax.set_ylabel(f"Δ {metric}")
    ax.set_xticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(baseline: Measures, reranked: Measures, latency: dict[str, float], info: dict[str, Any]) -> dict[str, Any]:
    return {
        **info,
        "baseline": baseline.mean,
        "reranked": reranked.mean,
        "significance_nDCG@10": paired_test(baseline, reranked),
        "latency_ms": latency,
        "per_query": {
            q: {"baseline": baseline.per_query[q], "reranked": reranked.per_query.get(q, {})}
            for q in baseline.per_query
        },
    }


def table(rep: dict[str, Any]) -> str:
    rows = [f"{'':12}{'nDCG@10':>10}{'MRR@10':>10}{'Recall@100':>12}"]
    for name in ("baseline", "reranked"):
        m = rep[name]
        rows.append(f"{name:12}{m['nDCG@10']:>10.4f}{m['MRR@10']:>10.4f}{m['Recall@100']:>12.4f}")
    sig = rep["significance_nDCG@10"]
    rows.append(f"paired t-test on nDCG@10 over {sig['queries']} queries: p = {sig['p_ttest']:.2g}")
    lat = rep["latency_ms"]
    rows.append(f"rerank latency per query: p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms")
    return "\n".join(rows)


def save(rep: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rep, indent=2) + "\n")


@dataclass(frozen=True)
class HeldOut:
    """A model's mean nDCG@10 over held-out sets, each set's figure, and its speed on their candidates."""

    mean: float
    per_set: dict[str, float]
    pairs_per_s: float


def held_out(model: str, folders: list[Path], first: int | None, depth: int, score: Score | None = None) -> HeldOut:
    """Rerank each set's given BM25 candidates (the first ``first`` judged queries) in fp32, or with ``score``.

    fp32, not the int8 CPU default: a guard rail compares two models, and must not see quantization noise."""
    per_set = {}
    pairs, seconds = 0, 0.0
    for folder in folders:
        judgments = datasets.qrels(folder)
        queries = {q: t for q, t in datasets.queries(folder).items() if q in judgments}
        if first:
            queries = dict(list(queries.items())[:first])
        _, run, took = rerank_candidates(folder, queries, model, depth, "fp32", score=score)
        rel = 2 if folder.name.startswith("trec_dl") else 1
        per_set[folder.name] = measure(judgments, run, rel).mean["nDCG@10"]
        pairs += sum(len(docs) for docs in run.values())
        seconds += sum(took) / 1000
        print(f"  {folder.name}: nDCG@10 {per_set[folder.name]:.4f}")
    return HeldOut(sum(per_set.values()) / len(per_set), per_set, pairs / seconds if seconds else 0.0)


def rerank_candidates(
    folder: Path,
    queries: dict[str, str],
    model: str,
    depth: int,
    precision: str = "auto",
    scoring: ScoringOptions | None = None,
    score: Score | None = None,
) -> tuple[Run, Run, list[float]]:
    """Score each query's given candidates (`bm25_top100.jsonl`); returns (given run, reranked run, ms per query).

    With ``scoring``, hits are ranked by the final score that the sidecar would give them (fusion included).
    ``score(query, texts)`` replaces loading ``model`` (a configured or remote model, say)."""
    from tqdm import tqdm

    from sidecar.config import ModelSpec
    from sidecar.rerank.scorers.models import load_model
    from sidecar.search.hits import final_scores

    if score is None:
        loaded = load_model(
            "eval", ModelSpec(path=model), device="auto", precision=precision, max_length=None, token_cache=0
        )

        def score(query: str, texts: list[str]) -> list[float]:
            return loaded.score(query, texts, 2048)

    baseline: Run = {}
    reranked: Run = {}
    took = []
    rows = [c for c in datasets.candidates(folder) if c.qid in queries]
    for c in tqdm(rows, desc="reranking", unit="query"):
        docids, texts = c.docids[:depth], c.texts[:depth]
        start = time.perf_counter()
        scores = score(c.query, texts)
        took.append((time.perf_counter() - start) * 1000)
        if scoring is not None:
            scores = final_scores(c.scores[:depth], scores, scoring)
        baseline[c.qid] = dict(zip(docids, c.scores[:depth], strict=True))
        reranked[c.qid] = dict(zip(docids, scores, strict=True))
    return baseline, reranked, took
