"""`bench load`'s shadow comparison: served latency with a 0.1 sample against shadow off, and the work's fate."""

from __future__ import annotations

from sidecar.tools.bench.load import Row, shadow_report


def _row(setup: str, clients: int, p50: float, p99: float, shadow: dict[str, float] | None = None) -> Row:
    return Row(setup, clients, 1.0, 0.0, 0.0, 0.0, 0, 0.3, served_p50_ms=p50, served_p99_ms=p99, shadow=shadow or {})


def test_shadow_is_compared_with_shadow_off_at_the_same_client_count() -> None:
    rows = [
        _row("shadow-off", 16, 100.0, 200.0, {}),
        _row("shadow-off", 1, 10.0, 20.0, {}),
        _row("shadow", 16, 105.0, 250.0, {"done": 3.0, "dropped": 40.0}),
        _row("full", 16, 5000.0, 9000.0),
    ]
    assert shadow_report(rows) == (
        "shadow 0.1 vs off at 16 clients: served p50 105 vs 100 ms (1.05x), p99 250 vs 200 ms (1.25x); "
        "shadow work: done 3, dropped 40"
    )
    assert shadow_report(rows[:2]) == ""  # no shadow row: nothing to compare


def test_alternating_rounds_compare_medians_and_sum_the_work() -> None:
    rows = [
        _row("shadow-off", 16, 100.0, 200.0),
        _row("shadow", 16, 90.0, 260.0, {"dropped": 10.0}),
        _row("shadow-off", 16, 140.0, 300.0),
        _row("shadow", 16, 130.0, 280.0, {"done": 2.0, "dropped": 5.0}),
        _row("shadow-off", 16, 120.0, 250.0),
        _row("shadow", 16, 500.0, 900.0, {"done": 1.0}),
    ]
    assert shadow_report(rows) == (
        "shadow 0.1 vs off at 16 clients (median of 3 rounds each): served p50 130 vs 120 ms (1.08x), "
        "p99 280 vs 250 ms (1.12x); shadow work: done 3, dropped 15"
    )
