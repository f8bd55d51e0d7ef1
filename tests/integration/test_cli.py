"""The command line: one table from error to exit code and one line, and the templates a wheel ships."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.tools.templates import default_dir, load

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = {
    "/_ilm/policy/rerank-sidecar-events",
    "/_plugins/_ism/policies/rerank-sidecar-events",
    "/_component_template/rerank-sidecar-english",
    "/_component_template/rerank-sidecar-passages",
    "/_index_template/rerank-sidecar-events",
    "/_index_template/rerank-sidecar-passages",
    "/_scripts/rerank-sidecar-bm25",
    "/_inference/rerank/rerank-sidecar",
    "/_plugins/_ml/connectors/rerank-sidecar",
    "/_plugins/_ml/models/rerank-sidecar",
    "/_search/pipeline/rerank-sidecar",
}


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rerank-sidecar: "), lines
    return lines[0]


def test_known_errors_exit_with_the_table_code_and_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unknown_key = tmp_path / "s.yaml"
    unknown_key.write_text("rules:\n  - index: x\n    feilds: [a]\n")
    assert main(["serve", "--config", str(unknown_key)]) == 2  # pydantic's ValidationError
    assert "rules.0.feilds" in _one_line(capsys)

    assert main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 2  # ConfigFileError
    assert "cannot read" in _one_line(capsys)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", str(empty)]) == 2  # UsageError
    assert "has no qrels.txt" in _one_line(capsys)

    assert main(["train", str(empty), "--eval", str(empty), "--out", str(tmp_path), "--loss", "contrastive"]) == 2
    assert "loss contrastive is for bi-encoders" in _one_line(capsys)

    nowhere = "http://127.0.0.1:9"  # never reached: each of these fails on its input first
    assert main(["templates", "apply", "--target", nowhere, "--dir", str(empty)]) == 1  # OSError
    assert f"no templates under {empty}" in _one_line(capsys)

    (empty / "component_templates").mkdir()
    (empty / "component_templates" / "broken.json").write_text("{not json")
    assert main(["templates", "apply", "--target", nowhere, "--dir", str(empty)]) == 1  # DataError
    assert "broken.json" in _one_line(capsys)

    assert main(["load", "--target", nowhere, "--corpus", str(tmp_path / "missing.jsonl")]) == 1  # OSError
    assert "missing.jsonl" in _one_line(capsys)


def test_a_model_that_does_not_load_is_one_line_in_eval_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "qrels.txt").write_text("q1 0 d1 1\n")
    (tmp_path / "queries.tsv").write_text("q1\thow to parse a date\n")
    (tmp_path / "bm25_top100.jsonl").write_text(json.dumps({"qid": "q1", "query": "x", "hits": []}) + "\n")
    model = tmp_path / "not-a-model"
    model.mkdir()
    args = ["eval", str(tmp_path), "--candidates", "--model", str(model), "--out", str(tmp_path / "out")]
    assert main(args) == 1  # ModelLoadError
    assert "cannot load model [eval]" in _one_line(capsys)


def test_distill_says_what_is_wrong_with_the_student_before_any_scoring(
    tmp_path: Path, tiny_model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "qrels.txt").write_text("q1 0 d1 1\n")
    (tmp_path / "queries.txt").write_text("how to parse a date\n")
    common = ["distill", "--queries", str(tmp_path / "queries.txt"), "--corpus", str(tmp_path)]
    common += ["--eval", str(tmp_path), "--out", str(tmp_path / "out"), "--teacher", tiny_model]
    assert main([*common, "--match-hidden", "1"]) == 2
    assert "--match-hidden needs --student-layers" in _one_line(capsys)
    assert main([*common, "--student-layers", "0,5", "--match-hidden", "1"]) == 2  # the tiny model has 2 layers
    assert "has layers 0-1; got [0, 5]" in _one_line(capsys)
    assert not (tmp_path / "out" / "lists.jsonl").exists()  # nothing was scored


def test_an_error_outside_the_table_is_a_bug_and_keeps_its_traceback() -> None:
    with pytest.raises(ValueError, match="invalid literal"):
        main(["bench", "proxy", "--clients", "many"])


def test_default_templates_dir_holds_every_template(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIDECAR_TEMPLATES_DIR", raising=False)
    folder = default_dir()
    assert {p.name for p in folder.iterdir()} >= {"component_templates", "index_templates", "search_templates"}
    assert (folder / "sidecar.yaml").is_file()
    assert {t.path for t in load(folder)} == TEMPLATES


@pytest.mark.slow
def test_the_wheel_ships_every_module_and_the_templates(tmp_path: Path) -> None:
    """A non-editable install finds es_templates/ inside the package, with no SIDECAR_TEMPLATES_DIR."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ behind
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("sidecar", "es_templates"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*build, str(src)], check=True, capture_output=True, timeout=120)
    (wheel,) = tmp_path.glob("rerank_sidecar-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = set(z.namelist())
        z.extractall(tmp_path / "site")
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "sidecar").rglob("*.py")}
    assert modules <= shipped, sorted(modules - shipped)  # a new subpackage must be listed in pyproject.toml
    data = {"sidecar/" + p.relative_to(ROOT).as_posix() for p in (ROOT / "es_templates").rglob("*") if p.is_file()}
    assert data <= shipped, sorted(data - shipped)

    env = {k: v for k, v in os.environ.items() if k not in ("SIDECAR_TEMPLATES_DIR", "PYTHONPATH")}
    code = (
        "from sidecar.tools.templates import default_dir, load; print(default_dir()); print(len(load(default_dir())))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,  # away from the checkout, whose sidecar/ would shadow the installed one
        env={**env, "PYTHONPATH": str(tmp_path / "site")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    folder, count = done.stdout.split()
    assert Path(folder) == tmp_path / "site" / "sidecar" / "es_templates" and int(count) == len(TEMPLATES)
