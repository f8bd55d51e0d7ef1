"""Evaluation datasets in the layout of TREC DL and BEIR folders: corpus.jsonl, queries.tsv, qrels.txt, runs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

Judgments = dict[str, dict[str, int]]


def default_data_dir() -> Path:
    """$SIDECAR_DATA_DIR, else ../shared/data beside a source checkout."""
    env = os.environ.get("SIDECAR_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def corpus(folder: Path) -> Iterator[dict[str, str]]:
    with (folder / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                doc = json.loads(line)
                yield {"_id": str(doc["_id"]), "title": doc.get("title", "") or "", "text": doc.get("text", "") or ""}


def queries(folder: Path) -> dict[str, str]:
    out = {}
    for line in (folder / "queries.tsv").read_text(encoding="utf-8").splitlines():
        qid, _, text = line.partition("\t")
        if qid:
            out[qid] = text
    return out


def qrels(folder: Path) -> Judgments:
    out: Judgments = {}
    for line in (folder / "qrels.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            out.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return out


@dataclass(frozen=True)
class Candidates:
    qid: str
    query: str
    docids: list[str]
    texts: list[str]
    scores: list[float]


def candidates(folder: Path) -> list[Candidates]:
    """The given first-stage lists (`bm25_top100.jsonl`), in rank order."""
    out = []
    for line in (folder / "bm25_top100.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        hits = row["hits"]
        out.append(
            Candidates(
                str(row["qid"]),
                row["query"],
                [str(h["docid"]) for h in hits],
                [h["text"] for h in hits],
                [float(h["score"]) for h in hits],
            )
        )
    return out
