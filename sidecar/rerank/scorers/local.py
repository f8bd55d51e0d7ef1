"""The model scorer: one worker thread per model, a bounded queue, micro-batches across requests, a score cache."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sidecar.config import ModelSpec, Settings
from sidecar.errors import ModelLoadError, TooManyRequests
from sidecar.metrics import Metrics
from sidecar.rerank.cache import LRU, text_key

log = logging.getLogger(__name__)


@dataclass
class _Job:
    query: str
    texts: list[str]
    future: asyncio.Future[list[float]]
    enqueued: float = field(default_factory=time.perf_counter)


class _Worker:
    """Owns one model: its own thread (never the loop, never the default executor) and its queue."""

    def __init__(self, name: str, spec: ModelSpec, settings: Settings, metrics: Metrics) -> None:
        self.name = name
        self.spec = spec
        self._settings = settings
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._pending_pairs = 0
        self._task: asyncio.Task[None] | None = None
        self.model: object | None = None
        self.state = "loading"
        self.error: str | None = None

    async def start(self) -> None:
        from sidecar.rerank.scorers.models import load_model

        loop = asyncio.get_running_loop()
        s = self._settings
        try:
            model = await loop.run_in_executor(
                self._executor,
                lambda: load_model(
                    self.name,
                    self.spec,
                    device=s.device,
                    precision=s.precision,
                    max_length=s.max_length,
                    token_cache=s.token_cache_entries,
                    max_chunks=s.max_chunks_per_doc,
                ),
            )
            await loop.run_in_executor(self._executor, model.score, "warm up", ["the model is warming up"], 512)
        except ModelLoadError as e:
            self.state, self.error = "failed", str(e)
            raise
        self.model = model
        self.state = "ready"
        self._task = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, query: str, texts: list[str]) -> list[float]:
        if self._pending_pairs + len(texts) > self._settings.queue_pairs:
            raise TooManyRequests(f"model [{self.name}] queue is full", headers={"Retry-After": "1"})
        future: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
        self._pending_pairs += len(texts)
        self._metrics.queue_pairs.inc(len(texts))
        self._queue.put_nowait(_Job(query, texts, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self._settings.max_wait_ms / 1000
        while True:
            jobs = [await self._queue.get()]
            if wait:
                deadline = loop.time() + wait
                while (remaining := deadline - loop.time()) > 0 and self._pairs(jobs) < self._budget_pairs():
                    try:
                        jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
                    except TimeoutError:
                        break
            # One pass takes about one batch budget of pairs: more would make the first requests wait for the
            # last (head-of-line), and on a CPU merging does not raise throughput.
            while not self._queue.empty() and self._pairs(jobs) < self._budget_pairs():
                jobs.append(self._queue.get_nowait())
            for job in jobs:
                self._pending_pairs -= len(job.texts)
                self._metrics.queue_pairs.dec(len(job.texts))
            live = [j for j in jobs if not j.future.cancelled()]  # cancelled requests cost nothing
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._compute, live)
            except Exception as e:
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            for job, scores in zip(live, results, strict=True):
                if not job.future.done():
                    job.future.set_result(scores)

    def _budget_pairs(self) -> int:
        return max(1, self._settings.batch_tokens // 64)

    @staticmethod
    def _pairs(jobs: Sequence[_Job]) -> int:
        return sum(len(j.texts) for j in jobs)

    def _compute(self, jobs: Sequence[_Job]) -> list[list[float]]:
        """Runs in the worker thread: the pairs of all jobs share length-sorted batches."""
        from sidecar.rerank.scorers.models import LoadedModel

        model = self.model
        assert isinstance(model, LoadedModel)
        results = model.score_many([(job.query, job.texts) for job in jobs], self._settings.batch_tokens)
        self._metrics.batch_pairs.observe(self._pairs(jobs))
        return results


class ModelScorer:
    """The Scorer the app uses by default: named models from settings plus the default model."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        specs = {"default": ModelSpec(path=settings.model, kind=settings.model_kind), **settings.models}
        self._workers = {name: _Worker(name, spec, settings, metrics) for name, spec in specs.items()}
        self._cache: LRU[tuple[str, str, bytes], float] = LRU(settings.score_cache_entries)

    async def start(self) -> None:
        import torch

        torch.set_num_threads(self._settings.threads or os.cpu_count() or 1)
        await asyncio.gather(*(w.start() for w in self._workers.values()))

    async def close(self) -> None:
        await asyncio.gather(*(w.close() for w in self._workers.values()))

    def has_model(self, name: str | None) -> bool:
        return (name or "default") in self._workers

    def readiness(self) -> Mapping[str, Mapping[str, object]]:
        return {
            name: {"state": w.state, "path": w.spec.path, **({"error": w.error} if w.error else {})}
            for name, w in self._workers.items()
        }

    async def scores(self, model: str | None, query: str, texts: Sequence[str]) -> list[float]:
        name = model or "default"
        worker = self._workers[name]
        keys = [(name, query, text_key(t)) for t in texts]
        cached = [self._cache.get(k) for k in keys]
        missing = [i for i, v in enumerate(cached) if v is None]
        self._metrics.cache.labels("hit").inc(len(texts) - len(missing))
        self._metrics.cache.labels("miss").inc(len(missing))
        if missing:
            fresh = await worker.submit(query, [texts[i] for i in missing])
            for i, s in zip(missing, fresh, strict=True):
                cached[i] = s
                self._cache.put(keys[i], s)
        return [float(v) for v in cached if v is not None]
