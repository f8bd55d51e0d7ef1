"""The shared evaluation data (TREC DL, SciFact), found via SIDECAR_DATA_DIR or ../shared/data; skipped if absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.tools.datasets import default_data_dir


def data_dir(name: str) -> Path:
    folder = default_data_dir() / name
    if not (folder / "qrels.txt").exists():
        pytest.skip(f"evaluation data {folder} is absent: set SIDECAR_DATA_DIR to the folder holding {name}/")
    return folder


def ndcg10(judgments: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> float:
    import ir_measures
    from ir_measures import nDCG

    return float(ir_measures.calc_aggregate([nDCG @ 10], judgments, run)[nDCG @ 10])
