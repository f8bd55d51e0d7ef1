"""The model queue with a deterministic compute function: what reaches the model, and when it refuses."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.metrics import Metrics
from sidecar.rerank.batcher import Batcher, estimate_tokens
from sidecar.rerank.failures import BadInput, Overloaded, ScoringFailed


class _Model:
    """Records each batch it is given; the first batch waits until the test lets it go."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.sizes: list[int] = []  # pairs per pass
        self.started = threading.Event()
        self.go = threading.Event()
        self.fail = False

    def __call__(self, jobs: Sequence[tuple[str, list[str]]]) -> list[list[float]]:
        self.batches.append([q for q, _ in jobs])
        self.sizes.append(sum(len(texts) for _, texts in jobs))
        self.started.set()
        assert self.go.wait(10)
        if self.fail:
            raise RuntimeError("boom")
        return [[float(len(t)) for t in texts] for _, texts in jobs]


async def _started(model: _Model) -> None:
    assert await asyncio.to_thread(model.started.wait, 10)


@pytest.fixture
async def setup() -> tuple[Batcher, _Model, Metrics]:
    model, metrics = _Model(), Metrics()
    batcher = Batcher("m", model, ThreadPoolExecutor(1), metrics, queue_pairs=6, budget_pairs=100, max_wait_s=0.0)
    batcher.start()
    return batcher, model, metrics


async def test_cancelled_jobs_never_reach_the_model_and_later_jobs_share_a_batch(
    setup: tuple[Batcher, _Model, Metrics],
) -> None:
    batcher, model, _ = setup
    first = asyncio.create_task(batcher.submit("first", ["a"]))
    await _started(model)  # the model is busy with the first batch; the next jobs queue up
    gone = asyncio.create_task(batcher.submit("gone", ["bb"]))
    second = asyncio.create_task(batcher.submit("second", ["ccc"]))
    third = asyncio.create_task(batcher.submit("third", ["dddd"]))
    await asyncio.sleep(0)
    gone.cancel()
    model.go.set()
    assert await first == [1.0] and await second == [3.0] and await third == [4.0]
    assert model.batches == [["first"], ["second", "third"]]
    with pytest.raises(asyncio.CancelledError):
        await gone
    await batcher.close()


async def test_a_full_queue_refuses_at_once_and_frees_its_room_when_served(
    setup: tuple[Batcher, _Model, Metrics],
) -> None:
    batcher, model, metrics = setup
    first = asyncio.create_task(batcher.submit("first", ["a"]))
    await _started(model)
    queued = asyncio.create_task(batcher.submit("queued", ["x"] * 6))  # fills queue_pairs=6
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        await batcher.submit("refused", ["y"])
    model.go.set()
    await first, await queued
    assert await batcher.submit("room again", ["z"] * 6) == [1.0] * 6
    assert metrics.registry.get_sample_value("sidecar_queue_pairs") == 0
    await batcher.close()


async def test_the_models_exception_is_a_scoring_failure_and_the_queue_keeps_serving(
    setup: tuple[Batcher, _Model, Metrics],
) -> None:
    batcher, model, _ = setup
    model.fail = True
    model.go.set()
    with pytest.raises(ScoringFailed) as info:
        await batcher.submit("q", ["a"])
    assert info.value.reason == "model_error" and isinstance(info.value.__cause__, RuntimeError)
    model.fail = False
    assert await batcher.submit("q", ["ab"]) == [2.0]
    await batcher.close()


class _Passes:
    """Records each pass as (query, texts) per job; the first pass waits until the test lets it go. Jobs whose
    query starts with "bad" get a ``BadInput`` of their own, as the real model gives a text it cannot read."""

    def __init__(self) -> None:
        self.passes: list[list[tuple[str, int]]] = []
        self.started = threading.Event()
        self.go = threading.Event()

    def __call__(self, jobs: Sequence[tuple[str, list[str]]]) -> list[list[float] | ScoringFailed]:
        self.passes.append([(q, len(texts)) for q, texts in jobs])
        self.started.set()
        assert self.go.wait(10)
        return [BadInput(q) if q.startswith("bad") else [float(len(t)) for t in texts] for q, texts in jobs]

    def texts_of(self, query: str) -> int:
        return sum(n for p in self.passes for q, n in p if q == query)


_texts = st.lists(st.text(alphabet="ab ", max_size=40), min_size=1, max_size=60)


@settings(max_examples=40, deadline=None)
@given(budget=st.integers(2, 32), data=st.data())
def test_a_small_search_behind_a_big_one_is_served_in_the_next_pass_not_after_all_of_it(
    budget: int, data: st.DataObject
) -> None:
    many = data.draw(st.integers(1, min(3, budget - 1)), label="small searches")
    sizes = data.draw(st.lists(st.integers(1, budget // (many + 1)), min_size=many, max_size=many), label="sizes")
    big = data.draw(st.lists(st.text(alphabet="ab ", max_size=40), min_size=2 * budget + 1, max_size=10 * budget))

    async def run() -> tuple[_Passes, list[list[float]]]:
        model = _Passes()
        batcher = Batcher("m", model, ThreadPoolExecutor(1), Metrics(), queue_pairs=10**6, budget_pairs=budget)
        batcher.start()
        first = asyncio.create_task(batcher.submit("big", big))
        assert await asyncio.to_thread(model.started.wait, 10)  # the big search holds the model
        small = [asyncio.create_task(batcher.submit(f"small{i}", ["s" * i] * n)) for i, n in enumerate(sizes)]
        await asyncio.sleep(0)
        model.go.set()
        done = await asyncio.wait_for(asyncio.gather(first, *small), 10)
        await batcher.close()
        return model, done

    model, done = asyncio.run(run())
    second = dict(model.passes[1])
    assert all(second.get(f"small{i}") == n for i, n in enumerate(sizes)), model.passes[:3]  # all of each
    assert done[0] == [float(len(t)) for t in big]  # and the big one is scored whole, in order
    assert all(d == [float(i)] * n for i, (d, n) in enumerate(zip(done[1:], sizes, strict=True)))


def test_budgeted_searches_keep_earliest_deadline_first() -> None:
    """Searches with a budget are answered at their deadline whatever they got: the earliest takes what fits
    first (sharing the pass would leave each a shorter head at its deadline), then the next."""

    async def run() -> _Passes:
        model = _Passes()
        batcher = Batcher("m", model, ThreadPoolExecutor(1), Metrics(), queue_pairs=10**6, budget_pairs=8)
        batcher.start()
        first = asyncio.create_task(batcher.submit("hold", ["x"]))
        assert await asyncio.to_thread(model.started.wait, 10)
        jobs = [asyncio.create_task(batcher.submit(f"b{i}", ["t"] * 6, budget_s=5 + i)) for i in range(2)]
        await asyncio.sleep(0)
        model.go.set()
        await asyncio.wait_for(asyncio.gather(first, *jobs), 10)
        await batcher.close()
        return model

    model = asyncio.run(run())
    assert model.passes[1] == [("b0", 6), ("b1", 2)], model.passes


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.text(alphabet="ab ", max_size=30), max_size=300), cap=st.integers(1, 100))
def test_a_search_over_max_search_pairs_queues_only_its_head_and_gets_that_scored(texts: list[str], cap: int) -> None:
    async def run() -> tuple[_Passes, list[float], float | None]:
        model, metrics = _Passes(), Metrics()
        model.go.set()
        batcher = Batcher(
            "m", model, ThreadPoolExecutor(1), metrics, queue_pairs=200, budget_pairs=16, max_search_pairs=cap
        )
        batcher.start()
        scores = await asyncio.wait_for(batcher.submit("q", texts), 10)  # never Overloaded: it queues <= 100
        await batcher.close()
        return model, scores, metrics.registry.get_sample_value("sidecar_queue_pairs")

    model, scores, waiting = asyncio.run(run())
    assert scores == [float(len(t)) for t in texts[:cap]]  # the head within the cap; the rest is the tail
    assert model.texts_of("q") == min(len(texts), cap) and waiting == 0


@settings(max_examples=40, deadline=None)
@given(
    texts=st.lists(st.text(alphabet="ab ", max_size=400), min_size=1, max_size=200),
    horizon_s=st.floats(0.01, 10.0),
    rate=st.floats(1e-6, 1e-2),
)
def test_a_search_without_a_budget_queues_no_more_than_the_model_scores_in_half_its_horizon(
    texts: list[str], horizon_s: float, rate: float
) -> None:
    room = horizon_s * 0.5 / rate  # estimated tokens
    head, total = 0, 0.0
    for t in texts:
        cost = estimate_tokens("q", t)
        if head and total + cost > room:
            break
        head, total = head + 1, total + cost

    async def run() -> list[float]:
        model = _Passes()
        model.go.set()
        batcher = Batcher(
            "m", model, ThreadPoolExecutor(1), Metrics(), queue_pairs=10**6, budget_pairs=32, order_horizon_s=horizon_s
        )
        batcher.calibrate(rate, 1.0)  # the cost model has measured: rate seconds a token
        batcher.start()
        scores = await asyncio.wait_for(batcher.submit("q", texts), 10)
        await batcher.close()
        return scores

    assert asyncio.run(run()) == [float(len(t)) for t in texts[:head]]  # a head it can finish, not a timeout


@settings(max_examples=40, deadline=None)
@given(jobs=st.lists(st.tuples(st.booleans(), _texts), min_size=1, max_size=6))
def test_one_searchs_input_error_fails_that_search_alone_and_never_counts_against_the_model(
    jobs: list[tuple[bool, list[str]]],
) -> None:
    async def run() -> list[list[float] | BaseException]:
        model = _Passes()
        batcher = Batcher("m", model, ThreadPoolExecutor(1), Metrics(), queue_pairs=10**6, budget_pairs=1000)
        batcher.start()
        first = asyncio.create_task(batcher.submit("first", ["a"]))
        assert await asyncio.to_thread(model.started.wait, 10)
        tasks = [batcher.submit(f"{'bad' if bad else 'good'}{i}", texts) for i, (bad, texts) in enumerate(jobs)]
        pending = asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)
        model.go.set()
        done = await asyncio.wait_for(pending, 10)
        await first
        assert await asyncio.wait_for(batcher.submit("after", ["ab"]), 10) == [2.0]  # the queue keeps serving
        await batcher.close()
        assert len(model.passes) == 3  # the searches shared one pass
        return done

    for (bad, texts), got in zip(jobs, asyncio.run(run()), strict=True):
        if bad:
            assert isinstance(got, BadInput) and not got.counts_against_model and got.reason == "bad_input"
        else:
            assert got == [float(len(t)) for t in texts]


async def test_drained_waits_for_the_jobs_already_submitted(setup: tuple[Batcher, _Model, Metrics]) -> None:
    batcher, model, _ = setup
    await asyncio.wait_for(batcher.drained(), 1)  # nothing queued: at once
    job = asyncio.create_task(batcher.submit("q", ["a", "bb"]))
    await _started(model)
    drained = asyncio.create_task(batcher.drained())
    await asyncio.sleep(0.05)
    assert not drained.done()  # a pass is still scoring the job
    model.go.set()
    assert await job == [1.0, 2.0]
    await asyncio.wait_for(drained, 1)
    await batcher.close()


async def test_shadow_work_waits_while_clients_are_served_and_then_runs_in_small_passes() -> None:
    model, metrics = _Model(), Metrics()
    batcher = Batcher("m", model, ThreadPoolExecutor(1), metrics, queue_pairs=100, budget_pairs=64, max_wait_s=0.0)
    batcher.start()
    model.go.set()
    metrics.request_started()  # a client request is being served
    shadow = asyncio.create_task(batcher.submit("shadow", ["t"] * 10, tier=1))
    await asyncio.sleep(0.2)
    assert model.sizes == []  # the model is free, but the served traffic is not idle
    assert await batcher.submit("search", ["aa"] * 6) == [2.0] * 6  # a search is served meanwhile
    assert model.batches == [["search"]]
    metrics.request_ended()
    ended = time.monotonic()
    assert await asyncio.wait_for(shadow, 5) == [1.0] * 10
    assert time.monotonic() - ended >= 0.1  # not in the gap between one request and the next: after a quiet spell
    assert model.sizes == [6, 2, 2, 2, 2, 2]  # the search's pass, then shadow passes of 64 // 32
    await batcher.close()


async def test_on_an_accelerator_shadow_work_needs_only_the_model_queue_idle() -> None:
    model, metrics = _Model(), Metrics()
    batcher = Batcher("m", model, ThreadPoolExecutor(1), metrics, queue_pairs=100, budget_pairs=64, max_wait_s=0.0)
    batcher.shares_cpu = False  # a GPU: the cores that serve requests are not the model's
    batcher.start()
    model.go.set()
    metrics.request_started()
    assert await asyncio.wait_for(batcher.submit("shadow", ["t"] * 4, tier=1), 5) == [1.0] * 4
    assert model.sizes == [2, 2]
    await batcher.close()
