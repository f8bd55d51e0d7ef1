from __future__ import annotations

from sidecar.rerank.breaker import CircuitBreaker


def test_opens_after_consecutive_failures_and_lets_one_trial_through_after_cooldown() -> None:
    now = [0.0]
    b = CircuitBreaker(failures=3, cooldown_s=10, clock=lambda: now[0])
    b.failure()
    b.failure()
    b.success()  # a success resets the count
    b.failure()
    b.failure()
    assert b.allow() and b.state == "closed"
    b.failure()
    assert b.state == "open" and not b.allow()
    now[0] = 10.0
    assert b.state == "half_open"
    assert b.allow() and not b.allow()  # exactly one trial
    b.failure()
    assert b.state == "open" and not b.allow()  # the trial failed: open again for a full cool-down
    now[0] = 20.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_a_trial_without_a_verdict_is_given_back() -> None:
    """A half-open trial that ends neither well nor badly (the queue was full, the client left) must not keep
    the circuit half-open with no trial allowed, forever."""
    now = [0.0]
    b = CircuitBreaker(failures=1, cooldown_s=10, clock=lambda: now[0])
    b.failure()
    now[0] = 10.0
    assert b.allow() and not b.allow()
    b.release()
    assert b.state == "half_open" and b.allow()  # the next call is the trial
    b.success()
    assert b.state == "closed"
