"""The shared evaluation data (TREC DL, SciFact), found via SIDECAR_DATA_DIR or ../shared/data.

In a user's clone without the data the quality tests are skipped, with the reason in pytest's summary (``-rs``).
CI sets ``SIDECAR_REQUIRE_DATA=1``: there a missing folder fails the test, so a broken data path cannot pass
unnoticed as a row of skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.tools.datasets import default_data_dir

REQUIRE_DATA = "SIDECAR_REQUIRE_DATA"


def data_required() -> bool:
    return os.environ.get(REQUIRE_DATA, "").strip().lower() not in ("", "0", "false", "no")


def data_dir(name: str) -> Path:
    folder = default_data_dir() / name
    if not (folder / "qrels.txt").exists():
        reason = f"evaluation data {folder} is absent: set SIDECAR_DATA_DIR to the folder holding {name}/"
        if data_required():
            pytest.fail(f"{reason} ({REQUIRE_DATA} is set: the data must be there)", pytrace=False)
        pytest.skip(reason)
    return folder


def ndcg10(judgments: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> float:
    import ir_measures
    from ir_measures import nDCG

    return float(ir_measures.calc_aggregate([nDCG @ 10], judgments, run)[nDCG @ 10])
