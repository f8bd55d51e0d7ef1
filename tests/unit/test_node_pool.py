"""The node pool on a clock of the test's own: round-robin over live nodes, dead nodes' backoff, retries steered to
another node; and the ``upstream`` setting that names the nodes."""

from __future__ import annotations

import argparse

import pytest
from pydantic import AnyHttpUrl, ValidationError

from sidecar.commands.settings_args import add_settings_flags, settings_from_args
from sidecar.config import Settings, UpstreamNodes
from sidecar.upstream import Node, NodePool

A, B, C = (Node.of(f"http://10.0.0.{i}:9200") for i in (1, 2, 3))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pool(*nodes: Node, clock: Clock | None = None, changes: list[tuple[str, bool]] | None = None) -> NodePool:
    def record(node: Node, up: bool) -> None:
        if changes is not None:
            changes.append((node.name, up))

    return NodePool(nodes or (A, B, C), clock=clock or Clock(), on_change=record)


def _picks(pool: NodePool, n: int) -> list[Node]:
    return [pool.get() for _ in range(n)]


def test_requests_go_round_robin_over_the_nodes_in_their_order() -> None:
    assert _picks(_pool(), 7) == [A, B, C, A, B, C, A]


def test_a_failed_node_rests_for_its_backoff_then_gets_requests_again() -> None:
    clock = Clock()
    pool = _pool(clock=clock)
    pool.mark_dead(B)
    assert set(_picks(pool, 6)) == {A, C} and pool.live() == [A, C]
    clock.now += 0.999
    assert B not in _picks(pool, 4)
    clock.now += 0.001
    assert pool.live() == [A, B, C] and B in _picks(pool, 3)


def test_the_backoff_doubles_with_each_failure_in_a_row_up_to_its_cap() -> None:
    clock = Clock()
    pool = _pool(clock=clock)
    rests = []
    for _ in range(8):
        pool.mark_dead(A)
        start = clock.now
        while pool.resting(A):
            clock.now += 0.125
        rests.append(clock.now - start)
    assert rests == [1, 2, 4, 8, 16, 30, 30, 30]


def test_an_answer_resets_the_count() -> None:
    clock = Clock()
    pool = _pool(clock=clock)
    for _ in range(3):  # 1 s, 2 s, 4 s
        pool.mark_dead(A)
        clock.now += 10
    pool.mark_live(A)
    pool.mark_dead(A)
    clock.now += 1
    assert not pool.resting(A)


def test_failures_while_a_node_already_rests_count_once() -> None:
    """The fifty requests in flight when a node goes down fail together: one failure, a 1 s rest, not 30 s."""
    clock = Clock()
    pool = _pool(clock=clock)
    for _ in range(50):
        pool.mark_dead(A)
    clock.now += 1
    assert not pool.resting(A)
    pool.mark_dead(A)  # its rest is over: this one counts, the second in a row
    clock.now += 1.5
    assert pool.resting(A)
    clock.now += 0.5
    assert not pool.resting(A)


def test_when_every_node_rests_the_one_whose_backoff_ends_first_is_tried() -> None:
    clock = Clock()
    pool = _pool(clock=clock)
    pool.mark_dead(C)  # rests until +1
    pool.mark_dead(A)
    clock.now += 1.5
    pool.mark_dead(A)  # second in a row: rests until +3.5
    pool.mark_dead(B)  # until +2.5
    clock.now += 0.1
    pool.mark_dead(C)  # second in a row: until +3.6
    assert pool.live() == [] and pool.get() == B
    assert pool.get(avoid=[B]) == A  # a retry: the next to wake among those it has not tried
    assert pool.get(avoid=[A, B, C]) == B


def test_a_retry_goes_to_a_live_node_it_has_not_tried() -> None:
    pool = _pool()
    for _ in range(5):
        assert pool.get(avoid=[A]) in (B, C)
    assert {pool.get(avoid=[A, B]) for _ in range(3)} == {C}
    assert pool.get(avoid=[A, B, C]) in (A, B, C)  # tried them all, and they are live: the next one
    assert pool.has_untried([A, B]) and not pool.has_untried([A, B, C])
    pool.mark_dead(C)
    assert not pool.has_untried([A, B])


def test_one_node_is_always_the_one() -> None:
    clock = Clock()
    pool = _pool(A, clock=clock)
    pool.mark_dead(A)
    assert pool.live() == [] and _picks(pool, 2) == [A, A] and pool.get(avoid=[A]) == A


def test_state_changes_are_reported_once_per_outage() -> None:
    changes: list[tuple[str, bool]] = []
    clock = Clock()
    pool = _pool(clock=clock, changes=changes)
    pool.mark_live(A)  # a node that was fine: nothing to report
    pool.mark_dead(A)
    pool.mark_dead(A)
    clock.now += 5
    pool.mark_dead(A)  # still down after its backoff: no news
    pool.mark_live(A)
    pool.mark_live(A)
    assert changes == [("http://10.0.0.1:9200", False), ("http://10.0.0.1:9200", True)]


def test_a_pool_needs_distinct_nodes() -> None:
    with pytest.raises(ValueError):
        NodePool(())
    with pytest.raises(ValueError):
        NodePool((A, Node.of("http://10.0.0.1:9200/")))


def test_a_node_is_an_origin_and_a_path_prefix_and_its_host_header_is_its_authority() -> None:
    node = Node.of("https://user:secret@engine.internal:9243")
    assert node.name == "https://engine.internal:9243" and node.host_header == "engine.internal:9243"
    assert str(node.url("//evil.example/x?q=1")) == "https://engine.internal:9243//evil.example/x?q=1"
    assert Node.of("http://[::1]:9200/").host_header == "[::1]:9200"
    assert str(Node.of("http://[::1]:9200/").url("/_search")) == "http://[::1]:9200/_search"
    gateway = Node.of("https://user:secret@gw.internal/es/")  # an engine behind a gateway's path
    assert gateway.name == "https://gw.internal/es" and gateway.host_header == "gw.internal"
    assert str(gateway.url("/logs-%2A/_search?q=a%20b")) == "https://gw.internal/es/logs-%2A/_search?q=a%20b"


# --- the setting --------------------------------------------------------------------------------------------------


def test_upstream_is_one_url_or_a_comma_separated_list_or_a_yaml_list(tmp_path: object) -> None:
    assert [str(u) for u in Settings().upstream] == ["http://127.0.0.1:9200/"]
    listed = Settings(upstream=" http://a:9200 ,http://b:9200").upstream
    assert [u.host for u in listed] == ["a", "b"] and listed.scheme == "http"
    assert str(listed) == "http://a:9200/,http://b:9200/"
    assert Settings(upstream=["https://a:9243", AnyHttpUrl("https://b:9243")]).upstream.scheme == "https"
    assert Settings(upstream=listed).upstream == listed
    assert isinstance(Settings(upstream="http://a:9200").upstream, UpstreamNodes)


def test_upstream_from_the_environment_a_flag_and_yaml(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    monkeypatch.setenv("SIDECAR_UPSTREAM", "http://e1:9200,http://e2:9200")
    assert str(settings_from_args(parser.parse_args([])).upstream) == "http://e1:9200/,http://e2:9200/"
    flagged = settings_from_args(parser.parse_args(["--upstream", "http://f1:9200,http://f2:9200"]))
    assert [u.host for u in flagged.upstream] == ["f1", "f2"]
    monkeypatch.delenv("SIDECAR_UPSTREAM")
    cfg = tmp_path / "s.yaml"  # type: ignore[operator]
    cfg.write_text("upstream:\n  - http://y1:9200\n  - http://y2:9200\n")
    assert [u.host for u in Settings(config=cfg).upstream] == ["y1", "y2"]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("http://a:9200,https://b:9243", "same scheme"),
        ("http://a:9200,http://a:9200/", "listed twice"),
        ("http://a:9200/es,http://a:9200/es/", "listed twice"),
        ("http://a:80,http://a", "listed twice"),
        ("http://a:9200,,http://b:9200", "valid URL"),
        ([], "at least 1"),
        ("ftp://a", "URL scheme"),
    ],
)
def test_bad_upstream_lists_are_refused(value: object, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        Settings(upstream=value)


def test_the_pool_settings() -> None:
    s = Settings(upstream_dead_backoff_s=0.5, upstream_max_dead_backoff_s=4)
    assert (s.upstream_dead_backoff_s, s.upstream_max_dead_backoff_s) == (0.5, 4)
    with pytest.raises(ValidationError):
        Settings(upstream_dead_backoff_s=0)
