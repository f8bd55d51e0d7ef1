"""Real weights on real data: `rerank-sidecar eval` on TREC DL19, end to end through osmem and on given candidates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main
from tests.quality.data import data_dir

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


def test_candidates_mode_reproduces_the_figures_and_the_fast_cpu_path_keeps_the_ranking(tmp_path: Path) -> None:
    """The official BM25 top 100 reranked in fp32 and in the CPU default (int8): nDCG@10 within 0.005."""
    folder = data_dir("trec_dl19")
    reports = {}
    for precision in ("fp32", "auto"):
        out = tmp_path / precision
        assert main(["eval", str(folder), "--candidates", "--precision", precision, "--out", str(out)]) == 0
        reports[precision] = _report(out)
        print(f"DL19 on the official BM25 top 100 ({precision}): {reports[precision]['reranked']}")
    fp32, fast = reports["fp32"], reports["auto"]
    assert fp32["baseline"]["nDCG@10"] == pytest.approx(0.5058, abs=0.001)
    assert fp32["reranked"]["nDCG@10"] == pytest.approx(0.6424, abs=0.001)
    assert fp32["reranked"]["MRR@10"] > fp32["baseline"]["MRR@10"]
    assert fast["reranked"]["nDCG@10"] == pytest.approx(fp32["reranked"]["nDCG@10"], abs=0.005)
