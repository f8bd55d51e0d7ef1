"""`bench proxy` runs end to end (embedded engine, a real `serve` process) and reports what it measured.

Only the shape and the accounting are checked here; speed is the benchmark's business, never a test's.
"""

from __future__ import annotations

import itertools
import os

import pytest

from sidecar.cli import main
from sidecar.tools.bench.proxy import cpu_seconds
from tests.quality.data import data_dir

pytestmark = pytest.mark.slow  # spawns processes or runs for many seconds: not in the fast tier


def _rows(text: str, first_header: str) -> list[list[str]]:
    lines = text[text.index(first_header) :].splitlines()[2:]
    body = itertools.takewhile(lambda line: line.startswith("|"), lines)  # the table ends at its first other line
    return [[c.strip() for c in line.strip("|").split("|")] for line in body]


def test_bench_proxy_reports_throughput_and_cpu_per_request(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "proxy", "--clients", "1,4", "--requests", "100", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    speed = _rows(out, "| clients | direct req/s")
    assert [r[0] for r in speed[:2]] == ["1", "4"]
    for row in speed[:2]:
        assert float(row[1]) > 0 and float(row[2]) > 0 and row[3].endswith("x")
        assert float(row[7]) > 0  # the bare forwarder's req/s
        assert row[-1] == "0"  # errors
    cpu = _rows(out, "| clients | client CPU")
    assert [r[0] for r in cpu] == ["1", "4"]
    for row in cpu:
        client, engine, sidecar = ([float(x) for x in cell.split(" / ")] for cell in row[1:4])
        assert engine[0] > 0 and engine[1] > 0 and client[0] > 0  # the engine and the load generator work
        assert sidecar[1] > 0.2 and sidecar[0] < sidecar[1] / 3  # the sidecar idles while the engine is hit directly
        assert 0 < float(row[4].rstrip("x")) < 1  # a proxy only ever adds CPU
    floor = _rows(out, "| clients | sidecar CPU ms/req | bare forwarder CPU ms/req")
    assert [r[0] for r in floor] == ["1", "4"]
    for row in floor:
        sidecar_ms, bare_ms = float(row[1]), float(row[2])
        assert sidecar_ms > 0 and bare_ms > 0
        assert float(row[3].rstrip("x")) == pytest.approx(sidecar_ms / bare_ms, rel=0.01, abs=0.01)  # cells are rounded
    # Every search took the sidecar's interception path and passed through: no rule covers the bench's index.
    assert "sidecar replies by X-Rerank: skipped; reason=no_rule x" in out
    assert out.count("reason=") == 1


def test_cpu_seconds_reads_a_process_and_ourselves() -> None:
    assert cpu_seconds(os.getpid()) > 0
    assert cpu_seconds(None) > 0


def test_bench_remote_scores_the_same_reranks_in_process_and_through_a_second_sidecar(
    tiny_model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = data_dir("trec_dl19").parent
    assert main(["bench", "remote", "--data", str(data), "--cross-encoder", tiny_model, "--queries", "3"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out, "| scorer |")
    assert [r[0] for r in rows] == ["in-process", "remote (sidecar)", "remote (cohere)"]
    base = float(rows[0][2])
    for row in rows:
        assert row[1] == "6"  # 3 queries, 2 rounds, each reranked in full (a short reply is an error)
        assert 0 < float(row[2]) <= float(row[3])
    for row in rows[1:]:
        assert float(row[4]) == pytest.approx(float(row[2]) - base, abs=0.11)
        assert float(row[5].rstrip("x")) == pytest.approx(float(row[2]) / base, rel=0.01, abs=0.01)
