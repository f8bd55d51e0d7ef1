"""The queue in front of one model: bounded, shared by all searches, served head first in short passes.

Scheduling, once for every kind of work:
- **Earliest deadline first.** A search with a latency budget has its deadline; one without is ordered by
  its arrival plus ``order_horizon_s`` (the hard ``rerank_timeout_ms``), so it is never starved for long.
  ``tier`` puts whole classes behind others (0: searches; 1: shadow work). Tier 1 runs only in the capacity the
  served traffic leaves idle, in small passes (a 32nd of a search's), so that a request arriving finds the
  model free soon: when no search waits for the model, and, for a model on the CPU (``shares_cpu``: it and the
  proxy and often the engine share the cores), when no client request has been served for ``_IDLE_AFTER_S``
  (a quiet spell, not the gap between a client's reply and its next request).
- **Progressive, head first.** A pass takes the next texts of each job in that order; a job's texts are the
  engine's candidates in the engine's order, so whatever is scored when its budget runs out is a prefix.
- **Fair.** Jobs without a budget share a pass round by round: each round gives each of them its next text, until
  the pass is full; so a small search behind a big one is served in the next pass, and a big search's size costs
  that search (more passes), not its neighbours. Budgeted jobs keep earliest deadline first: each is answered at
  its deadline with whatever head it got, and sharing would shorten every head.
- **One search's share is bounded.** A job queues at most ``max_search_pairs`` texts, and no more than the
  model can score, by the cost model, in half the order horizon (``rerank_timeout_ms``), or in its budget and
  the grace; the rest is answered as a budget's tail is (a prefix of scores), so an oversized search is scored
  as far as it fairly can be rather than timing out and counting against the model.
- **Passes that end in time.** A live cost model (seconds per estimated token, an exponentially weighted
  average over recent passes) sizes each pass so that it ends before the earliest deadline in it, and within
  a quarter of the smallest recent budget, so that a budgeted search never waits long behind a big pass.
  A pass under way at a job's deadline may still finish within a quarter of its budget, so a search is
  answered within 1.25 x its budget plus the time it spends outside the model.
- **Bounded.** A full queue refuses at once (``Overloaded``); cancelled jobs are dropped before their texts
  reach a pass.
- **Input errors are the job's.** ``Compute`` answers each job with its scores or a ``ScoringFailed`` of its
  own (``BadInput``: its text could not be tokenized), which fails that job alone; only an exception raised by
  the pass fails every job in it (the model's failure).
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

# Runs in the model's thread: one score list per (query, texts) chunk, in order, or that chunk's own failure.
Compute = Callable[[Sequence[tuple[str, list[str]]]], Sequence[list[float] | ScoringFailed]]
# The estimated cost of scoring one (query, text) pair, in tokens: the unit the cost model's rate is in.
Estimate = Callable[[str, str], float]

_SMOOTHING = 0.3  # weight of the newest pass in the rate
_RECENT_BUDGET_S = 30.0  # how long a budget keeps passes short after its search was seen
_GRACE = 0.25  # a pass under way at a job's deadline may finish within this fraction of its budget
_UNBUDGETED_SHARE = 0.5  # a job without a budget queues what the model alone scores in this much of the horizon
_IDLE_PASS = 32  # tier-1 passes are this many times smaller than a search's: one pair on a CPU, 8 on a GPU
_IDLE_POLL_S = 0.02  # how often tier-1 work looks for idle time while the served traffic keeps the sidecar busy
_IDLE_AFTER_S = 0.1  # on a CPU, tier-1 work starts a pass only after this long without a client request


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
        max_search_pairs: int | None = None,
        max_wait_s: float = 0.0,
        order_horizon_s: float = 10.0,
        estimate: Estimate = estimate_tokens,
    ) -> None:
        self.name = name
        self._compute = compute
        self._executor = executor
        self._metrics = metrics
        self._queue_pairs = queue_pairs
        self._max_search_pairs = max_search_pairs
        self.budget_pairs = budget_pairs
        self.shares_cpu = True  # the model runs on the cores that serve requests (set for the device once loaded)
        self._max_wait_s = max_wait_s
        self._order_horizon_s = order_horizon_s
        self._estimate = estimate
        self._jobs: list[_Job] = []
        self._idle = asyncio.Event()  # set while no job is queued or being scored
        self._idle.set()
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

    async def drained(self) -> None:
        """Return once every job submitted so far has been answered (a model being replaced finishes its work)."""
        await self._idle.wait()

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
        """Scores of ``texts``, or with ``budget_s`` of the longest prefix scored within it (possibly none).

        Only the head that one search may queue (``_share``) is scored: past it, a prefix, budget or not."""
        texts, costs = self._share(query, texts, budget_s)
        if not texts:
            return []
        if self.waiting_pairs + len(texts) > self._queue_pairs:
            raise Overloaded(f"model [{self.name}] queue is full")
        loop = asyncio.get_running_loop()
        now = loop.time()
        if budget_s is not None:
            self._note_budget(budget_s, now)
        job = _Job(
            query,
            texts,
            costs,
            deadline=now + (budget_s if budget_s is not None else self._order_horizon_s),
            budgeted=budget_s is not None,
            tier=tier,
            seq=next(self._seq),
        )
        self._jobs.append(job)
        self._idle.clear()
        self._metrics.queue_pairs.inc(len(texts))
        self._wake.set()
        try:
            if budget_s is None:
                await job.done.wait()
            else:
                await self._until_deadline(job, budget_s)
        except asyncio.CancelledError:  # its search was abandoned (the client went away): its waiting texts go
            self._metrics.dropped_pairs.inc(job.waiting)
            raise
        finally:
            self._forget(job)
        if job.error is not None:
            raise job.error
        return list(job.scores)

    def _share(self, query: str, texts: list[str], budget_s: float | None) -> tuple[list[str], list[float]]:
        """The head of ``texts`` one search may put on the queue, and its costs: at most ``max_search_pairs``,
        and (once the cost model has measured) no more estimated tokens than the model alone scores in its budget
        and the grace, or without one in half the order horizon; the first text always (as a pass's first pair,
        trying it costs no other search anything)."""
        head = texts if self._max_search_pairs is None else texts[: self._max_search_pairs]
        seconds = self._order_horizon_s * _UNBUDGETED_SHARE if budget_s is None else budget_s * (1 + _GRACE)
        room = math.inf if not self.rate else seconds / self.rate
        costs: list[float] = []
        total = 0.0
        for text in head:
            cost = self._estimate(query, text)
            if costs and total + cost > room:
                break
            costs.append(cost)
            total += cost
        return head[: len(costs)], costs

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
            if not self._jobs:
                self._idle.set()

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
            if not chunks:  # budgeted work whose time is up (its waiters answer it), or tier 1 waiting for idle
                await asyncio.sleep(0.001 if any(j.waiting and not j.tier for j in self._jobs) else _IDLE_POLL_S)
                continue
            for job, _, _ in chunks:
                job.in_flight = True
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self._compute, [(job.query, texts) for job, _, texts in chunks]
                )
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:  # the model's own failure (a Rust panic too: pyo3's is a BaseException)
                log.warning("model [%s] failed on a pass: %s", self.name, type(e).__name__)
                for job, _, _ in chunks:
                    job.in_flight = False
                    job.error = ScoringFailed(f"model [{self.name}] failed: {type(e).__name__}")
                    job.error.__cause__ = e
                    job.done.set()
                continue
            scored = [(c, r) for c, r in zip(chunks, results, strict=True) if not isinstance(r, ScoringFailed)]
            tokens = sum(sum(job.costs[start : start + len(texts)]) for (job, start, texts), _ in scored)
            self.calibrate(time.perf_counter() - started, tokens)
            self._metrics.batch_pairs.observe(sum(len(texts) for _, _, texts in chunks))
            for (job, start, _), scores in zip(chunks, results, strict=True):
                job.in_flight = False
                if isinstance(scores, ScoringFailed):  # this job's own input: it alone fails
                    log.info("model [%s] refused a search's input: %s", self.name, scores)
                    job.error = job.error or scores
                    self._stop_taking(job)
                    job.done.set()
                    continue
                if len(job.scores) == start:  # a job answered or forgotten meanwhile keeps what it had
                    job.scores.extend(scores)
                if len(job.scores) == len(job.texts) or (job.taken == len(job.texts) and job.budgeted):
                    job.done.set()

    def _next_pass(self, now: float) -> list[tuple[_Job, int, list[str]]]:
        """The texts of the next pass, jobs in (tier, deadline, arrival) order, head first, while the pass's
        predicted end stays before every deadline in it and within the time slice. Budgeted jobs take what fits
        in that order (earliest deadline first: each is answered at its deadline anyway); a run of jobs without a
        budget is served in rounds, each round giving each of them its next text, so that a big one costs
        itself more passes, not its neighbours their turn. A job whose next text does not fit sits out the
        rest of the pass."""
        slice_end = math.inf
        if self._recent_budget is not None and now - self._recent_budget[1] <= _RECENT_BUDGET_S:
            slice_end = now + self._recent_budget[0] / 4
        served = any(j.tier == 0 and j.waiting for j in self._jobs)
        served = served or (self.shares_cpu and self._metrics.idle_s() < _IDLE_AFTER_S)
        order = sorted(
            (j for j in self._jobs if j.waiting and not (j.budgeted and j.deadline <= now) and not (j.tier and served)),
            key=lambda j: (j.tier, j.deadline, j.seq),
        )
        idle_pairs = max(1, self.budget_pairs // _IDLE_PASS)
        take: dict[_Job, int] = {}
        pairs, tokens, horizon = 0, 0.0, slice_end

        def add(job: _Job) -> bool:
            """Put the job's next text in the pass if it fits; whether it did."""
            nonlocal pairs, tokens, horizon
            n = take.get(job, 0)
            at = job.taken + n
            if n >= job.waiting or pairs >= (idle_pairs if job.tier else self.budget_pairs):
                return False
            cost = job.costs[at]
            ends = now + (self.rate or 0.0) * (tokens + cost)
            own = job.deadline if job.budgeted else math.inf
            # Past the slice only for a pass's first pair (every pass makes progress), never past a deadline,
            # except for a job's very first pair: trying it costs no latency (the deadline answers anyway).
            limit = min(horizon, own) if pairs else own if at else math.inf
            if ends > limit:
                return False
            take[job] = n + 1
            pairs, tokens = pairs + 1, tokens + cost
            return True

        for (_, budgeted), run in itertools.groupby(order, key=lambda j: (j.tier, j.budgeted)):
            if budgeted:
                for job in run:
                    while add(job):
                        pass
                    if job in take:
                        horizon = min(horizon, job.deadline)
                continue
            turn = list(run)
            while turn:  # rounds: a job stays in them while its next text fits
                turn = [job for job in turn if add(job)]
        chunks: list[tuple[_Job, int, list[str]]] = []
        for job in order:
            n = take.get(job, 0)
            if n:
                chunks.append((job, job.taken, job.texts[job.taken : job.taken + n]))
                job.taken += n
                self._metrics.queue_pairs.dec(n)
        return chunks
