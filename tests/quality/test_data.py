"""Where the evaluation data is missing: a skip with its reason in a user's clone, a failure in CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.quality.data import REQUIRE_DATA, data_dir


def test_missing_data_is_a_skip_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_DATA_DIR", str(tmp_path))
    monkeypatch.delenv(REQUIRE_DATA, raising=False)
    with pytest.raises(pytest.skip.Exception, match="SIDECAR_DATA_DIR") as info:
        data_dir("trec_dl19")
    assert str(tmp_path / "trec_dl19") in str(info.value)


@pytest.mark.parametrize("value", ["1", "true"])
def test_missing_data_fails_where_it_is_required(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SIDECAR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(REQUIRE_DATA, value)
    with pytest.raises(pytest.fail.Exception, match=REQUIRE_DATA):
        data_dir("trec_dl19")


def test_present_data_is_found_whatever_the_requirement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "scifact").mkdir()
    (tmp_path / "scifact" / "qrels.txt").write_text("1 0 d1 1\n")
    monkeypatch.setenv("SIDECAR_DATA_DIR", str(tmp_path))
    for value in ("1", "0"):
        monkeypatch.setenv(REQUIRE_DATA, value)
        assert data_dir("scifact") == tmp_path / "scifact"
