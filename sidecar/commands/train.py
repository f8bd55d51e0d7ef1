"""`rerank-sidecar train JUDGMENTS_DIR`: fine-tune a model on judgments, with a guard rail against a worse one."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from sidecar.commands.errors import DataError, UsageError, reading
from sidecar.tools import evaluation
from sidecar.tools.embedded import packaged_model
from sidecar.tools.indexing import bm25

_LOSSES = {"cross-encoder": ("bce", "lambda"), "bi-encoder": ("contrastive",)}


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("train", help="fine-tune a cross- or bi-encoder on judgments")
    parser.add_argument("judgments", type=Path, help="folder with corpus.jsonl, queries.tsv, qrels.txt")
    parser.add_argument("--model", help="starting model (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--kind", choices=list(_LOSSES), default="cross-encoder", help="what to train")
    parser.add_argument("--loss", choices=["bce", "lambda", "contrastive"], help="default: bce / contrastive")
    parser.add_argument("--eval", type=Path, action="append", required=True, help="held-out dataset (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoints, best/, history.json, training.png")
    parser.add_argument("--engine", help="engine (or sidecar) to mine BM25 negatives from (default: embedded osmem)")
    parser.add_argument("--negatives", type=int, default=8, help="hard negatives mined per query")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--list-size", type=int, default=16, help="documents per query list (lambda loss)")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--train-queries", type=int, help="use N judged queries (a slice)")
    parser.add_argument("--positives", type=int, help="at most N judged positives per query (best grades first)")
    parser.add_argument("--eval-queries", type=int, help="evaluate on the first N queries of each held-out set")
    parser.add_argument("--eval-depth", type=int, default=100, help="candidates reranked per held-out query")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-gain", type=float, default=0.005, help="nDCG@10 gain an epoch needs to be handed out")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sidecar.tools.training import data, trainer

    loss = cast("trainer.Loss", args.loss or _LOSSES[args.kind][0])
    if loss not in _LOSSES[args.kind]:
        raise UsageError(f"train: loss {loss} is for {_other(args.kind)}s")
    for folder in (args.judgments, *args.eval):
        if not (folder / "qrels.txt").exists():
            raise UsageError(f"train: {folder} has no qrels.txt")
    start = args.model or str(packaged_model())
    with reading(args.judgments), _miner(args) as mine:  # the miner indexes the corpus first
        training = data.load(args.judgments, mine, args.negatives, args.train_queries, args.seed, args.positives)
    print(training.report())
    if not training.examples:
        raise DataError(f"train: no query of {args.judgments} has a judged positive document")
    config = trainer.TrainConfig(
        start=start,
        kind=args.kind,
        loss=loss,
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        list_size=args.list_size,
        lr=args.lr,
        max_length=args.max_length,
        seed=args.seed,
        min_gain=args.min_gain,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    trainer.train(config, training, lambda model: _held_out(model, args), resume=args.resume)
    return 0


def _other(kind: str) -> str:
    return "bi-encoder" if kind == "cross-encoder" else "cross-encoder"


def _held_out(model: Path, args: argparse.Namespace) -> float:
    return evaluation.held_out(str(model), args.eval, args.eval_queries, args.eval_depth).mean


@contextlib.contextmanager
def _miner(args: argparse.Namespace) -> Iterator[Any]:
    if not args.negatives:
        yield None
        return
    with bm25(args.engine, f"train-{args.judgments.name}".lower(), args.judgments) as retrieve:
        yield lambda query, k: [h["_id"] for h in retrieve(query, k)]
