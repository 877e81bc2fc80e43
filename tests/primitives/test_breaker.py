"""The one circuit breaker, as the cache (3 failures) and the shards (1) use it, on a
clock the test moves."""

from __future__ import annotations

import pytest

from primitives.breaker import CircuitBreaker
from tests.primitives.conftest import Clock


def test_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=2, clock=Clock())
    breaker.failure()
    breaker.failure()
    breaker.success()  # consecutive: a success in between starts the count again
    breaker.failure()
    breaker.failure()
    assert breaker.state == "closed"
    assert breaker.allow()
    assert breaker.retry_after == 0.0
    breaker.failure()
    assert breaker.is_open
    assert breaker.state == "open"
    assert not breaker.allow()


def test_open_then_exactly_one_probe_then_closed() -> None:
    clock = Clock()
    closed: list[bool] = []
    breaker = CircuitBreaker(
        failure_threshold=1, cooldown=2, clock=clock, on_close=lambda: closed.append(True)
    )
    breaker.failure()
    assert breaker.retry_after == 2.0
    clock.now += 1.5
    assert not breaker.allow()
    assert breaker.retry_after == pytest.approx(0.5)
    clock.now += 0.5
    assert breaker.state == "half_open"
    assert breaker.retry_after == 0.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # nobody else while it is out
    assert breaker.is_open
    assert breaker.retry_after == 2.0  # at most until the probe times out
    assert closed == []
    breaker.success()
    assert closed == [True]
    assert breaker.state == "closed"
    assert breaker.allow()
    assert breaker.allow()
    breaker.success()  # already closed: on_close is for the transition only
    assert closed == [True]


def test_a_failed_probe_opens_it_for_another_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, cooldown=5, clock=clock)
    breaker.failure()
    assert breaker.open_until == 0.0  # below the threshold: never opened
    breaker.failure()
    assert breaker.open_until == 1005.0
    clock.now += 5
    assert breaker.allow()
    breaker.failure()
    assert breaker.open_until == 1010.0  # only a failure moves it
    assert not breaker.allow()
    assert breaker.retry_after == 5.0
    clock.now += 5
    assert breaker.allow()
    breaker.success()
    assert breaker.open_until == 0.0


def test_a_probe_that_never_reports_does_not_wedge_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=2, probe_timeout=0.5, clock=clock)
    breaker.failure()
    clock.now += 2
    assert breaker.allow()  # this probe's caller is cancelled and never reports
    clock.now += 0.4
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()  # the next caller probes instead
    breaker.success()
    assert not breaker.is_open


def test_outcomes_of_calls_let_through_earlier_still_count() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, cooldown=2, clock=clock)
    breaker.failure()
    breaker.failure()
    # A call allowed before the breaker opened succeeds late: the backend answers.
    breaker.success()
    assert breaker.state == "closed"


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        CircuitBreaker(failure_threshold=0)


def busy_breaker(clock: Clock) -> CircuitBreaker:
    # As the cache builds it: 3 failures, or 1 s of nothing but (at least 5) timeouts.
    return CircuitBreaker(failure_threshold=3, cooldown=2, clock=clock, timeout_window=1.0)


def test_timeouts_of_a_busy_backend_do_not_open_it() -> None:
    clock = Clock()
    breaker = busy_breaker(clock)
    for _ in range(100):  # a burst: many calls time out together...
        breaker.timed_out()
    assert breaker.state == "closed"
    for _ in range(50):  # ...and for long, but some calls still get answers
        clock.now += 0.5
        breaker.timed_out()
        breaker.timed_out()
        breaker.success()
    assert breaker.state == "closed"


def test_timeouts_with_no_answer_for_the_window_open_it() -> None:
    clock = Clock()
    breaker = busy_breaker(clock)
    for _ in range(10):
        breaker.timed_out()
        clock.now += 0.25  # 2.5 s without one answer: the backend is hung
    assert breaker.is_open
    assert not breaker.allow()
    clock.now += 2
    assert breaker.allow()  # the probe...
    breaker.timed_out()  # ...timing out reopens it at once
    assert breaker.state == "open"


def test_connection_failures_still_open_it_at_the_threshold() -> None:
    clock = Clock()
    breaker = busy_breaker(clock)
    breaker.timed_out()
    breaker.failure()
    breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.is_open


def test_without_a_timeout_window_a_timeout_is_a_failure() -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown=2, clock=Clock())
    breaker.timed_out()
    breaker.timed_out()
    assert breaker.is_open
