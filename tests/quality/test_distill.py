"""`rerank-sidecar distill`: a fresh cross-encoder head learns the packaged bi-encoder's order of BM25 candidates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.tools.launch import serve_process
from tests.quality.data import data_dir
from tests.servers import Http, index_docs

pytestmark = pytest.mark.quality


def _distill(engine: str, out: Path, *extra: str) -> dict[str, object]:
    dl21, dl19 = data_dir("trec_dl21"), data_dir("trec_dl19")
    args = ["distill", "--corpus", str(dl21), "--eval", str(dl19), "--out", str(out), "--engine", engine]
    args += ["--eval-queries", "3", "--eval-depth", "20", "--list-size", "8", "--depth", "20", *extra]
    assert main(args) == 0
    report: dict[str, object] = json.loads((out / "report.json").read_text())
    return report


def test_a_two_layer_student_moves_towards_the_teacher_and_serves(engine: str, tmp_path: Path, http: Http) -> None:
    out = tmp_path / "l2"
    report = _distill(engine, out, "--pseudo-queries", "60", "--student-layers", "2", "--tolerance", "1")
    before, after = report["agreement_before"], report["agreement_after"]
    assert isinstance(before, float) and isinstance(after, float)
    assert after > before + 0.1, report  # on lists it never trained on: the teacher's order, better kept
    best = out / "best"
    assert report["handed_out"] == str(best)
    assert json.loads((best / "config.json").read_text())["num_hidden_layers"] == 2
    assert not (best / "modules.json").exists()  # a cross-encoder folder, not a sentence-transformers one
    index_docs(http, engine, (("docs", str(i), {"text": f"apple pear {i}"}) for i in range(5)))
    with serve_process(engine, "--model", str(best), ready_path="/_sidecar/ready") as (_, url):
        reply = http("POST", url + "/docs/_search", {"query": {"match": {"text": "apple"}}})
        assert reply.status == 200 and reply.headers["X-Rerank"].startswith("applied"), reply.headers


def test_real_queries_and_the_guard_rail_refuses_a_student_far_below_the_teacher(engine: str, tmp_path: Path) -> None:
    (tmp_path / "best").mkdir()  # a stale result must not survive
    queries = tmp_path / "captured.txt"
    lines = (data_dir("trec_dl21") / "queries.tsv").read_text().splitlines()[:20]
    queries.write_text("".join(line.split("\t", 1)[1] + "\n" for line in lines))  # as capture_queries writes
    report = _distill(engine, tmp_path, "--queries", str(queries), "--tolerance", "0", "--student-layers", "1")
    teacher = report["teacher"]
    epochs = report["epochs"]
    assert isinstance(teacher, dict) and isinstance(epochs, list) and len(epochs) == 1
    assert epochs[0]["nDCG@10"] < teacher["nDCG@10"]  # one epoch of 18 lists: far from the teacher
    assert report["handed_out"] is None and not (tmp_path / "best").exists()
