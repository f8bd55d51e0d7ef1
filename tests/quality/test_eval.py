"""Real weights on real data: `rerank-sidecar eval` on TREC DL19, end to end through osmem and on given candidates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main

from .data import data_dir

pytestmark = pytest.mark.quality
PNG = b"\x89PNG\r\n\x1a\n"


def _report(out: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert (out / "ndcg10_deltas.png").read_bytes().startswith(PNG)
    for run in ("baseline", "reranked"):
        lines = (out / f"{run}.trec").read_text().splitlines()
        assert len({line.split()[0] for line in lines}) == 43 and len(lines[0].split()) == 6
    return report


def test_end_to_end_through_osmem_beats_the_engines_bm25(engine: str, tmp_path: Path) -> None:
    """The packaged all-MiniLM-L6-v2 as a bi-encoder, window 100, every search through the sidecar."""
    folder = data_dir("trec_dl19")
    assert main(["eval", str(folder), "--engine", engine, "--out", str(tmp_path)]) == 0
    report = _report(tmp_path)
    bm25, reranked = report["baseline"]["nDCG@10"], report["reranked"]["nDCG@10"]
    print(f"DL19 nDCG@10 end to end: osmem BM25 {bm25:.4f} -> through the sidecar {reranked:.4f}")
    assert reranked - bm25 >= 0.25
    assert report["significance_nDCG@10"]["p_ttest"] < 0.01
    assert report["latency_ms"]["p50"] > 0


def test_candidates_mode_reproduces_the_official_bm25_and_the_reranked_figure(tmp_path: Path) -> None:
    folder = data_dir("trec_dl19")
    assert main(["eval", str(folder), "--candidates", "--out", str(tmp_path)]) == 0
    report = _report(tmp_path)
    print(f"DL19 on the official BM25 top 100: {report['baseline']} -> {report['reranked']}")
    assert report["baseline"]["nDCG@10"] == pytest.approx(0.5058, abs=0.001)
    assert report["reranked"]["nDCG@10"] == pytest.approx(0.64, abs=0.01)
    assert report["reranked"]["MRR@10"] > report["baseline"]["MRR@10"]
