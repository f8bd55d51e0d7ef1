"""`bench proxy` runs end to end (embedded engine, a real `serve` process) and reports what it measured.

Only the shape and the accounting are checked here; speed is the benchmark's business, never a test's.
"""

from __future__ import annotations

import os

import pytest

from sidecar.cli import main
from sidecar.tools.bench.proxy import cpu_seconds


def _rows(text: str, first_header: str) -> list[list[str]]:
    lines = text[text.index(first_header) :].splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:] if line.startswith("|")]


def test_bench_proxy_reports_throughput_and_cpu_per_request(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "proxy", "--clients", "1,4", "--requests", "100", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    speed = _rows(out, "| clients | direct req/s")
    assert [r[0] for r in speed[:2]] == ["1", "4"]
    for row in speed[:2]:
        assert float(row[1]) > 0 and float(row[2]) > 0 and row[3].endswith("x")
        assert row[7] == "0"  # errors
    cpu = _rows(out, "| clients | client CPU")
    assert [r[0] for r in cpu] == ["1", "4"]
    for row in cpu:
        client, engine, sidecar = ([float(x) for x in cell.split(" / ")] for cell in row[1:4])
        assert engine[0] > 0 and engine[1] > 0 and client[0] > 0  # the engine and the load generator work
        assert sidecar[1] > 0.2 and sidecar[0] < sidecar[1] / 3  # the sidecar idles while the engine is hit directly
        assert 0 < float(row[4].rstrip("x")) < 1  # a proxy only ever adds CPU


def test_cpu_seconds_reads_a_process_and_ourselves() -> None:
    assert cpu_seconds(os.getpid()) > 0
    assert cpu_seconds(None) > 0
