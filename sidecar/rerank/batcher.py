"""The queue in front of one model: bounded, shared by all searches, served head first in short passes.

Scheduling, once for every kind of work:
- **Earliest deadline first.** A search with a latency budget has its deadline; one without is ordered by
  its arrival plus ``order_horizon_s`` (the hard ``rerank_timeout_ms``), so it is never starved for long.
  ``tier`` puts whole classes behind others (0: searches; 1: shadow work that may wait for idle time).
- **Progressive, head first.** A pass takes the next texts of each job in that order; a job's texts are the
  engine's candidates in the engine's order, so whatever is scored when its budget runs out is a prefix.
- **Passes that end in time.** A live cost model (seconds per estimated token, an exponentially weighted
  average over recent passes) sizes each pass so that it ends before the earliest deadline in it, and within
  a quarter of the smallest recent budget, so that a budgeted search never waits long behind a big pass.
  A pass under way at a job's deadline may still finish within a quarter of its budget, so a search is
  answered within 1.25 x its budget plus the time it spends outside the model.
- **Bounded.** A full queue refuses at once (``Overloaded``); cancelled jobs are dropped before their texts
  reach a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sidecar.metrics import Metrics
from sidecar.rerank.failures import Overloaded, ScoringFailed

log = logging.getLogger(__name__)

# Runs in the model's thread: one score list per (query, texts) chunk, in order.
Compute = Callable[[Sequence[tuple[str, list[str]]]], list[list[float]]]
# The estimated cost of scoring one (query, text) pair, in tokens: the unit the cost model's rate is in.
Estimate = Callable[[str, str], float]

_SMOOTHING = 0.3  # weight of the newest pass in the rate
_RECENT_BUDGET_S = 30.0  # how long a budget keeps passes short after its search was seen
_GRACE = 0.25  # a pass under way at a job's deadline may finish within this fraction of its budget


def estimate_tokens(query: str, text: str) -> float:
    """About four characters a token, plus the special tokens; the rate is calibrated on the same estimate."""
    return 3 + (len(query) + len(text)) / 4


@dataclass(eq=False)
class _Job:
    query: str
    texts: list[str]
    costs: list[float]
    deadline: float  # loop time, the scheduling key
    budgeted: bool  # scored as far as the deadline allows, then answered with the prefix
    tier: int
    seq: int
    done: asyncio.Event = field(default_factory=asyncio.Event)
    scores: list[float] = field(default_factory=list)  # of texts[: len(scores)]
    taken: int = 0  # texts handed to passes
    in_flight: bool = False  # some of its texts are in the pass under way
    error: ScoringFailed | None = None

    @property
    def waiting(self) -> int:
        return len(self.texts) - self.taken


class Batcher:
    def __init__(
        self,
        name: str,
        compute: Compute,
        executor: ThreadPoolExecutor,
        metrics: Metrics,
        *,
        queue_pairs: int,
        budget_pairs: int,
        max_wait_s: float = 0.0,
        order_horizon_s: float = 10.0,
        estimate: Estimate = estimate_tokens,
    ) -> None:
        self.name = name
        self._compute = compute
        self._executor = executor
        self._metrics = metrics
        self._queue_pairs = queue_pairs
        self.budget_pairs = budget_pairs
        self._max_wait_s = max_wait_s
        self._order_horizon_s = order_horizon_s
        self._estimate = estimate
        self._jobs: list[_Job] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.rate: float | None = None  # seconds per estimated token
        self._recent_budget: tuple[float, float] | None = None  # (smallest recent budget, when seen)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def calibrate(self, seconds: float, tokens: float) -> None:
        """Fold one measured pass (or a warm-up) into the cost model."""
        if tokens <= 0:
            return
        sample = seconds / tokens
        self.rate = sample if self.rate is None else (1 - _SMOOTHING) * self.rate + _SMOOTHING * sample

    def predict_s(self, query: str, texts: Sequence[str]) -> float | None:
        """The model time these pairs would take alone, by the cost model (None before it has measured)."""
        return None if self.rate is None else self.rate * sum(self._estimate(query, t) for t in texts)

    @property
    def waiting_pairs(self) -> int:
        return sum(j.waiting for j in self._jobs)

    async def submit(
        self, query: str, texts: list[str], *, budget_s: float | None = None, tier: int = 0
    ) -> list[float]:
        """Scores of ``texts``, or with ``budget_s`` of the longest prefix scored within it (possibly none)."""
        if self.waiting_pairs + len(texts) > self._queue_pairs:
            raise Overloaded(f"model [{self.name}] queue is full")
        loop = asyncio.get_running_loop()
        now = loop.time()
        if budget_s is not None:
            self._note_budget(budget_s, now)
        job = _Job(
            query,
            texts,
            [self._estimate(query, t) for t in texts],
            deadline=now + (budget_s if budget_s is not None else self._order_horizon_s),
            budgeted=budget_s is not None,
            tier=tier,
            seq=next(self._seq),
        )
        self._jobs.append(job)
        self._metrics.queue_pairs.inc(len(texts))
        self._wake.set()
        try:
            if budget_s is None:
                await job.done.wait()
            else:
                await self._until_deadline(job, budget_s)
        finally:
            self._forget(job)
        if job.error is not None:
            raise job.error
        return list(job.scores)

    async def _until_deadline(self, job: _Job, budget_s: float) -> None:
        """Wait for the job until its deadline; a pass that holds its next texts then may finish within a
        grace of a quarter of the budget (the cost model's error), so that the head it scores counts."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.done.wait(), max(0.0, job.deadline - loop.time()))
            return
        if job.in_flight:
            self._stop_taking(job)  # no further passes for it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.done.wait(), budget_s * _GRACE)

    def _forget(self, job: _Job) -> None:
        if job in self._jobs:
            self._jobs.remove(job)
            self._stop_taking(job)

    def _stop_taking(self, job: _Job) -> None:
        self._metrics.queue_pairs.dec(job.waiting)
        job.taken = len(job.texts)

    def _note_budget(self, budget_s: float, now: float) -> None:
        recent = self._recent_budget
        if recent is None or budget_s <= recent[0] or now - recent[1] > _RECENT_BUDGET_S:
            self._recent_budget = (budget_s, now)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not any(j.waiting for j in self._jobs):
                self._wake.clear()
                await self._wake.wait()
                if self._max_wait_s and self.waiting_pairs < self.budget_pairs:
                    await asyncio.sleep(self._max_wait_s)  # let other searches' pairs join this pass
            chunks = self._next_pass(loop.time())
            if not chunks:
                await asyncio.sleep(0.001)  # only budgeted work whose time is up: its waiters answer it
                continue
            tokens = sum(sum(job.costs[start : start + len(texts)]) for job, start, texts in chunks)
            for job, _, _ in chunks:
                job.in_flight = True
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self._compute, [(job.query, texts) for job, _, texts in chunks]
                )
            except Exception as e:  # the model's own failure, translated where the model is touched
                log.warning("model [%s] failed on a pass: %s", self.name, type(e).__name__)
                for job, _, _ in chunks:
                    job.in_flight = False
                    job.error = ScoringFailed(f"model [{self.name}] failed: {type(e).__name__}")
                    job.error.__cause__ = e
                    job.done.set()
                continue
            self.calibrate(time.perf_counter() - started, tokens)
            self._metrics.batch_pairs.observe(sum(len(texts) for _, _, texts in chunks))
            for (job, start, _), scores in zip(chunks, results, strict=True):
                job.in_flight = False
                if len(job.scores) == start:  # a job answered or forgotten meanwhile keeps what it had
                    job.scores.extend(scores)
                if len(job.scores) == len(job.texts) or (job.taken == len(job.texts) and job.budgeted):
                    job.done.set()

    def _next_pass(self, now: float) -> list[tuple[_Job, int, list[str]]]:
        """The texts of the next pass: jobs in (tier, deadline) order, head first, while the pass's predicted
        end stays before every deadline in it and within the time slice."""
        slice_end = math.inf
        if self._recent_budget is not None and now - self._recent_budget[1] <= _RECENT_BUDGET_S:
            slice_end = now + self._recent_budget[0] / 4
        chunks: list[tuple[_Job, int, list[str]]] = []
        pairs, tokens, horizon = 0, 0.0, slice_end
        for job in sorted((j for j in self._jobs if j.waiting), key=lambda j: (j.tier, j.deadline, j.seq)):
            if job.budgeted and job.deadline <= now:
                continue
            own = job.deadline if job.budgeted else math.inf
            start, n = job.taken, 0
            while n < job.waiting and pairs < self.budget_pairs:
                cost = job.costs[start + n]
                ends = now + (self.rate or 0.0) * (tokens + cost)
                # Past the slice only for a pass's first pair (every pass makes progress), never past a deadline,
                # except for a job's very first pair: trying it costs no latency (the deadline answers anyway).
                limit = min(horizon, own) if pairs else own if start + n else math.inf
                if ends > limit:
                    break
                n, pairs, tokens = n + 1, pairs + 1, tokens + cost
            if n:
                chunks.append((job, start, job.texts[start : start + n]))
                job.taken += n
                self._metrics.queue_pairs.dec(n)
                if job.budgeted:
                    horizon = min(horizon, job.deadline)
            if pairs >= self.budget_pairs:
                break
        return chunks
