"""`rerank-sidecar train` on a slice of TREC DL21 judgments, evaluated on DL19 queries it never saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.tools.launch import serve_process
from tests.quality.data import data_dir
from tests.servers import Http

pytestmark = pytest.mark.quality


def _train(engine: str, out: Path, *extra: str) -> dict[str, object]:
    dl21, dl19 = data_dir("trec_dl21"), data_dir("trec_dl19")
    args = ["train", str(dl21), "--eval", str(dl19), "--out", str(out), "--engine", engine]
    args += ["--train-queries", "6", "--positives", "4", "--negatives", "4"]
    args += ["--eval-queries", "4", "--eval-depth", "20", *extra]
    assert main(args) == 0
    history: dict[str, object] = json.loads((out / "history.json").read_text())
    assert (out / "training.png").read_bytes().startswith(b"\x89PNG")
    return history


def test_bi_encoder_resumes_its_loss_falls_and_the_checkpoint_serves(
    engine: str, tmp_path: Path, http: Http, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ("--kind", "bi-encoder", "--lr", "5e-5", "--batch-size", "8")
    _train(engine, tmp_path, *flags, "--epochs", "1")
    history = _train(engine, tmp_path, *flags, "--epochs", "2", "--resume")
    assert "resuming from" in capsys.readouterr().out
    epochs = history["epochs"]
    assert isinstance(epochs, list) and len(epochs) == 2
    assert epochs[1]["loss"] < epochs[0]["loss"]  # the same examples, seen again: the loss falls
    checkpoint = tmp_path / "checkpoints" / "epoch-2"
    assert (checkpoint / "modules.json").exists()  # still a sentence-transformers folder: serve sees a bi-encoder
    with serve_process(engine, "--model", str(checkpoint), ready_path="/_sidecar/ready") as (_, url):
        ready = json.loads(http("GET", url + "/_sidecar/ready").data)
        assert ready["models"]["default"]["state"] == "ready"


def test_guard_rail_hands_out_nothing_worse_than_the_start(engine: str, tmp_path: Path) -> None:
    """A fresh cross-encoder head trained on a few judgments cannot beat the packaged bi-encoder it started from."""
    (tmp_path / "best").mkdir()  # a stale result must not survive either
    history = _train(engine, tmp_path, "--kind", "cross-encoder", "--loss", "lambda", "--epochs", "1")
    epochs = history["epochs"]
    assert isinstance(epochs, list) and isinstance(history["start_metric"], float)
    assert epochs[0]["nDCG@10"] <= history["start_metric"]
    assert not (tmp_path / "best").exists()
