"""`rerank-sidecar distill`: a small local cross-encoder that learns a teacher's scores on engine candidates."""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import resource
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sidecar.commands.errors import UsageError, reading
from sidecar.tools import datasets, evaluation
from sidecar.tools.embedded import packaged_model
from sidecar.tools.indexing import bm25


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("distill", help="distill a teacher into a small cross-encoder")
    parser.add_argument(
        "--teacher",
        help="model that scores the candidates (default: the packaged bi-encoder); "
        "with --teacher-config, the name of one of its models (default: default)",
    )
    parser.add_argument(
        "--teacher-config",
        type=Path,
        help="a sidecar YAML whose models (local or remote: TEI, "
        "Cohere, another sidecar...) the teacher is one of, scored as `serve` would",
    )
    parser.add_argument("--student", help="starting student: a model folder or hub id (default: the teacher's)")
    parser.add_argument(
        "--student-layers",
        type=_layers,
        help="keep only K transformer layers of the student: the first K, or those listed (0-based: 0,5)",
    )
    parser.add_argument(
        "--match-hidden",
        type=float,
        default=0.0,
        metavar="WEIGHT",
        help="with --student-layers: also learn the uncut student's hidden states (TinyBERT's layer mapping), "
        "this weight on their MSE (default 0: off)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--queries", type=Path, help="training queries: queries.tsv or one query per line")
    source.add_argument("--pseudo-queries", type=int, help="cut N inverse-cloze queries from the corpus instead")
    parser.add_argument("--corpus", type=Path, required=True, help="folder with corpus.jsonl (indexed for BM25)")
    parser.add_argument("--index", help="index name for the corpus (default: distill-<folder>)")
    parser.add_argument("--engine", help="engine to take candidates from (default: embedded osmem)")
    parser.add_argument("--eval", type=Path, action="append", required=True, help="held-out dataset (repeatable)")
    parser.add_argument("--eval-queries", type=int, help="evaluate on the first N queries of each held-out set")
    parser.add_argument("--eval-depth", type=int, default=100, help="candidates reranked per held-out query")
    parser.add_argument("--out", type=Path, required=True, help="lists, checkpoints, epochs/, best/, report.json")
    parser.add_argument("--depth", type=int, default=50, help="BM25 candidates per training query")
    parser.add_argument("--list-size", type=int, default=16, help="candidates per training list")
    parser.add_argument(
        "--temperature",
        type=float,
        help="teacher softmax temperature (default: 0.05 for a bi-encoder's cosine, 1 for a cross-encoder's logits)",
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-lists", type=int, default=4, help="lists per optimiser step")
    parser.add_argument("--lr", type=float, default=7e-5)
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="hand out the student only within this nDCG@10 of the teacher (or above --current)",
    )
    parser.add_argument("--current", help="the model served today: a student that beats it is handed out too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sidecar.rerank.scorers.models import detect_kind

    if args.match_hidden and args.student_layers is None:
        raise UsageError("distill: --match-hidden needs --student-layers (a student cut from a deeper encoder)")
    for folder in args.eval:
        if not (folder / "qrels.txt").exists():
            raise UsageError(f"distill: {folder} has no qrels.txt")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.teacher_config is not None:
            teacher = args.teacher or "default"
            scorer, kind, path = stack.enter_context(_configured(args.teacher_config, teacher))
        else:
            teacher = args.teacher or str(packaged_model())
            scorer, kind, path = _scorer(teacher), detect_kind(teacher, "auto"), teacher
        return _distill(args, teacher, scorer, kind, args.student or path or str(packaged_model()), started)


def _distill(args: argparse.Namespace, teacher: str, scorer: Any, kind: str, student: str, started: float) -> int:
    from sidecar.tools.training import distill
    from sidecar.tools.training.artifacts import plot

    temperature = args.temperature or (0.05 if kind == "bi-encoder" else 1.0)
    try:
        model = distill.student_model(student, args.student_layers, args.max_length, args.seed)
    except ValueError as e:  # layers the student does not have: said before any scoring
        raise UsageError(f"distill: {e}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    if args.queries is not None:
        with reading(args.queries):
            queries = distill.read_queries(args.queries)
    else:
        with reading(args.corpus):
            texts = [_text(d) for d in datasets.corpus(args.corpus)]
        queries = distill.pseudo_queries(texts, args.pseudo_queries, rng)
    cache = args.out / "lists.jsonl"
    with reading(cache):
        done = distill.cached_lists(cache, queries)
    with contextlib.ExitStack() as stack:
        with reading(args.corpus):  # only the indexing reads the corpus: a teacher's error is its own
            retrieve = stack.enter_context(_retriever(args))
        lists = distill.score_lists(queries, done, retrieve, scorer, cache, args.depth, args.list_size, rng)
    print(f"{len(lists)} lists of up to {args.list_size} candidates scored by {teacher} (temperature {temperature})")
    report: dict[str, Any] = {"teacher": {"model": teacher, **_held_out(teacher, args, scorer)}, "epochs": []}
    print(f"teacher {teacher}: held-out nDCG@10 {report['teacher']['nDCG@10']:.4f}")
    if args.current:
        report["current"] = {"model": args.current, **_held_out(args.current, args)}
    probe = lists[len(lists) - max(2, min(200, len(lists) // 10)) :]  # lists the student never trains on
    lists = lists[: len(lists) - len(probe)]
    report["agreement_before"] = distill.agreement([x.scores for x in probe], _student_scores(model, probe))

    def on_epoch(epoch: int, folder: Path) -> None:
        figures = _held_out(str(folder), args)
        report["epochs"].append({"epoch": epoch, "folder": str(folder), **figures})
        print(f"epoch {epoch}: held-out nDCG@10 {figures['nDCG@10']:.4f} ({figures['pairs_per_s']:.0f} pairs/s)")

    losses = distill.fit(
        model,
        lists,
        args.out,
        temperature=temperature,
        epochs=args.epochs,
        batch_lists=args.batch_lists,
        lr=args.lr,
        seed=args.seed,
        resume=args.resume,
        on_epoch=on_epoch,
        uncut=distill.uncut_encoder(student) if args.match_hidden else None,
        hidden_weight=args.match_hidden,
    )
    epochs = [(int(e["epoch"]), float(e["nDCG@10"])) for e in report["epochs"]]
    plot(losses, epochs, report["teacher"]["nDCG@10"], "teacher", args.out / "training.png")
    report["agreement_after"] = distill.agreement([x.scores for x in probe], _student_scores(model, probe))
    report["wall_s"] = round(time.monotonic() - started, 1)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    report["handed_out"] = _hand_out(report, args)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(_summary(report))
    return 0


def _layers(value: str) -> list[int]:
    """``K`` (the first K layers) or a comma-separated list of 0-based layer indices."""
    try:
        layers = [int(i) for i in value.split(",")] if "," in value else list(range(int(value)))
    except ValueError:
        layers = []
    if not layers:
        raise argparse.ArgumentTypeError(f"{value!r}: a number of layers, or layer indices such as 0,5")
    return layers


def _scorer(model: str) -> Any:
    from sidecar.config import ModelSpec
    from sidecar.rerank.scorers.models import load_model

    loaded = load_model(
        "teacher", ModelSpec(path=model), device="auto", precision="fp32", max_length=None, token_cache=0
    )
    return lambda query, texts: loaded.score(query, texts, 2048)


@contextlib.contextmanager
def _configured(config: Path, name: str) -> Iterator[tuple[Any, str, str | None]]:
    """A model of a sidecar config, scored through the same scorers as `serve` (local, remote, cached): its score
    function, its kind (a remote model's scores are taken as a cross-encoder's logits) and its local path, if any."""
    import asyncio

    from sidecar.config import DEFAULT_MODEL, NO_MODEL, Settings
    from sidecar.metrics import Metrics
    from sidecar.rerank.scorers.models import detect_kind
    from sidecar.rerank.scorers.router import default_scorer

    # only the teacher is loaded: not the default model too, unless the teacher is it
    overrides: dict[str, Any] = {} if name == DEFAULT_MODEL else {"model": NO_MODEL}
    with reading(config):
        settings = Settings(config=config, **overrides)
    scorer = default_scorer(settings, Metrics())
    if not scorer.has_model(name):
        raise UsageError(f"distill: {config} has no model {name!r}")
    spec = settings.models.get(name)
    path = None if spec is not None and spec.remote else (spec.path if spec is not None else settings.model)
    kind = "cross-encoder" if path is None else detect_kind(path, spec.kind if spec is not None else "auto")
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(scorer.start())
        yield (lambda query, texts: loop.run_until_complete(scorer.scores(name, query, texts))), kind, path
    finally:
        loop.run_until_complete(scorer.close())
        loop.close()


def _student_scores(model: Any, lists: list[Any]) -> list[list[float]]:
    return [[float(s) for s in model.predict([(x.query, d) for d in x.docs], show_progress_bar=False)] for x in lists]


def _text(doc: dict[str, str]) -> str:
    return (doc["title"] + "\n" + doc["text"]).strip()


def _held_out(model: str, args: argparse.Namespace, score: Any = None) -> dict[str, Any]:
    figures = evaluation.held_out(model, args.eval, args.eval_queries, args.eval_depth, score)
    return {"nDCG@10": figures.mean, "per_set": figures.per_set, "pairs_per_s": figures.pairs_per_s}


def _hand_out(report: dict[str, Any], args: argparse.Namespace) -> str | None:
    """Copy the best epoch to ``out/best`` when it is within the tolerance of the teacher or beats --current."""
    best = max(report["epochs"], key=lambda e: e["nDCG@10"], default=None)
    target = args.out / "best"
    if target.exists():
        shutil.rmtree(target)
    if best is None:
        return None
    near_teacher = best["nDCG@10"] >= report["teacher"]["nDCG@10"] - args.tolerance
    beats_current = "current" in report and best["nDCG@10"] > report["current"]["nDCG@10"]
    if not (near_teacher or beats_current):
        print(
            f"the best epoch ({best['nDCG@10']:.4f}) is more than {args.tolerance} below the teacher "
            f"({report['teacher']['nDCG@10']:.4f}) and beats no --current model: nothing was written to {target}"
        )
        return None
    shutil.copytree(best["folder"], target)
    return str(target)


def _summary(report: dict[str, Any]) -> str:
    rows = [f"{'':10}{'nDCG@10':>10}{'pairs/s':>10}  model"]
    named = [("teacher", report["teacher"]), *((f"epoch {e['epoch']}", e) for e in report["epochs"])]
    if "current" in report:
        named.insert(1, ("current", report["current"]))
    for name, r in named:
        rows.append(f"{name:10}{r['nDCG@10']:>10.4f}{r['pairs_per_s']:>10.0f}  {r.get('model') or r['folder']}")
    rows.append(
        f"order agreement with the teacher (Kendall tau): {report['agreement_before']:.3f} before, "
        f"{report['agreement_after']:.3f} after"
    )
    rows.append(f"wall {report['wall_s']:.0f} s, peak RSS {report['peak_rss_mb']} MB; best: {report['handed_out']}")
    return "\n".join(rows)


@contextlib.contextmanager
def _retriever(args: argparse.Namespace) -> Iterator[Any]:
    with bm25(args.engine, args.index or f"distill-{args.corpus.name}".lower(), args.corpus) as retrieve:
        yield lambda query, k: [
            (h["_id"], _text({"title": "", "text": "", **h["_source"]})) for h in retrieve(query, k)
        ]
