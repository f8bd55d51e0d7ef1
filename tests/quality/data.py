"""The shared evaluation data (TREC DL, SciFact): found via SIDECAR_DATA_DIR or ../shared/data."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def data_dir(name: str) -> Path:
    base = Path(os.environ.get("SIDECAR_DATA_DIR", ROOT.parent / "shared" / "data"))
    folder = base / name
    if not (folder / "qrels.txt").exists():
        pytest.skip(f"evaluation data {folder} is absent: set SIDECAR_DATA_DIR to the folder holding {name}/")
    return folder


def corpus(folder: Path) -> Iterator[dict[str, str]]:
    with (folder / "corpus.jsonl").open() as f:
        for line in f:
            yield json.loads(line)


def queries(folder: Path) -> dict[str, str]:
    out = {}
    for line in (folder / "queries.tsv").read_text().splitlines():
        qid, _, text = line.partition("\t")
        out[qid] = text
    return out


def qrels(folder: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels.txt").read_text().splitlines():
        qid, _, doc, grade = line.split()
        out.setdefault(qid, {})[doc] = int(grade)
    return out


def candidates(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "bm25_top100.jsonl").read_text().splitlines()]


def ndcg10(judgments: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> float:
    import ir_measures
    from ir_measures import nDCG

    return float(ir_measures.calc_aggregate([nDCG @ 10], judgments, run)[nDCG @ 10])
