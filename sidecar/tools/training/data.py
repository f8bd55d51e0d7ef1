"""Training examples from judgments: graded positives, judged negatives and hard negatives mined from BM25."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.tools import datasets


@dataclass
class Example:
    """One query with its judged documents (grade by id) and mined negatives, texts resolved."""

    qid: str
    query: str
    graded: dict[str, int]
    negatives: list[str]


@dataclass
class TrainingSet:
    examples: list[Example]
    texts: dict[str, str]
    max_grade: int
    problems: dict[str, int] = field(default_factory=dict)

    def report(self) -> str:
        pos = sum(1 for e in self.examples for g in e.graded.values() if g > 0)
        neg = sum(len(e.negatives) + sum(1 for g in e.graded.values() if g == 0) for e in self.examples)
        out = f"{len(self.examples)} queries, {pos} judged positives, {neg} negatives (judged and mined)"
        issues = [f"{n} {what}" for what, n in self.problems.items() if n]
        return out + (f"; skipped: {', '.join(issues)}" if issues else "")


def load(
    folder: Path,
    miner: Callable[[str, int], list[str]] | None,
    negatives: int,
    limit: int | None,
    seed: int,
    positives: int | None = None,
) -> TrainingSet:
    """Judgments of ``folder``; ``miner(query, k)`` returns BM25 doc ids (judged positives are never negatives)."""
    texts = {d["_id"]: (d["title"] + "\n" + d["text"]).strip() for d in datasets.corpus(folder)}
    if not texts:
        raise ValueError(f"{folder}/corpus.jsonl holds no documents")
    judgments = datasets.qrels(folder)
    queries = datasets.queries(folder)
    problems = {
        "judgments of unknown documents": sum(1 for d in judgments.values() for doc in d if doc not in texts),
        "judged queries missing from queries.tsv": sum(1 for q in judgments if q not in queries),
        "queries without judgments": sum(1 for q in queries if q not in judgments),
        "queries without a positive": 0,
    }
    rng = random.Random(seed)
    examples = []
    for qid, query in queries.items():
        graded = {d: g for d, g in judgments.get(qid, {}).items() if d in texts}
        if not graded:
            continue
        if not any(g > 0 for g in graded.values()):
            problems["queries without a positive"] += 1
            continue
        if positives:  # keep the best-graded positives, and every judged negative
            kept = sorted((d for d, g in graded.items() if g > 0), key=lambda d: -graded[d])[:positives]
            graded = {d: g for d, g in graded.items() if g == 0 or d in kept}
        mined: list[str] = []
        if miner is not None and negatives:
            mined = [d for d in miner(query, negatives + len(graded)) if d in texts and graded.get(d, 0) == 0]
            mined = [d for d in mined if d not in graded][:negatives]
        examples.append(Example(qid, query, graded, mined))
    rng.shuffle(examples)
    if limit:
        examples = examples[:limit]
    max_grade = max((g for e in examples for g in e.graded.values()), default=1) or 1
    return TrainingSet(examples, texts, max_grade, problems)
