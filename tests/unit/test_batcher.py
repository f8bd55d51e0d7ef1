"""The model queue with a deterministic compute function: what reaches the model, and when it refuses."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from sidecar.metrics import Metrics
from sidecar.rerank.batcher import Batcher
from sidecar.rerank.failures import Overloaded, ScoringFailed


class _Model:
    """Records each batch it is given; the first batch waits until the test lets it go."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        self.go = threading.Event()
        self.fail = False

    def __call__(self, jobs: Sequence[tuple[str, list[str]]]) -> list[list[float]]:
        self.batches.append([q for q, _ in jobs])
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
