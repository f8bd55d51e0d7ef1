"""A circuit breaker per model: after repeated failures, stop sending it work for a cool-down."""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    """Closed -> open after ``failures`` consecutive failures; after ``cooldown_s`` one trial call is let through
    (half-open): success closes the circuit, failure opens it again. Every allowed call ends in exactly one
    of ``success``, ``failure`` or ``release``."""

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures
        self._cooldown = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self._cooldown else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial:
            self._trial = True
            return True
        return False

    def release(self) -> None:
        """A call ended without a verdict on the model (its queue was full, the search went away): a half-open
        trial is given back, so that the next call can be the trial."""
        self._trial = False

    def success(self) -> None:
        self._failures, self._opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        self._failures += 1
        self._trial = False
        if self._opened_at is not None or self._failures >= self._threshold:
            self._opened_at = self._clock()
