"""L1 and the circuit breaker on their own (a controllable clock, no I/O)."""

from __future__ import annotations

from cache.codec import Envelope
from primitives.breaker import CircuitBreaker
from primitives.localcache import LocalCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_l1_expires_entries_and_evicts_least_recently_used() -> None:
    clock = Clock()
    l1: LocalCache[str] = LocalCache(2, clock=clock)
    l1.set("a", "A", ttl=10)
    l1.set("b", "B", ttl=1)
    assert l1.get("a") == "A"  # a becomes most recently used
    l1.set("c", "C", ttl=10)  # evicts b, the least recently used
    assert l1.get("b") is None
    assert l1.get("a") == "A"
    clock.now += 11
    assert l1.get("a") is None
    assert l1.get("c") is None
    assert len(l1) == 0


def test_breaker_opens_after_failures_and_probes_once() -> None:
    clock = Clock()
    closed = []
    breaker = CircuitBreaker(failure_threshold=2, cooldown=5, clock=clock)
    breaker.on_close = lambda: closed.append(True)
    assert breaker.allow()
    breaker.failure()
    assert breaker.allow()
    breaker.failure()
    assert breaker.is_open
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow()  # the single half-open probe
    assert not breaker.allow()  # no second probe while the first is out
    breaker.failure()
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow()
    breaker.success()
    assert not breaker.is_open
    assert closed == [True]


def test_envelope_round_trip_and_negative_marker() -> None:
    env = Envelope(b'{"x":1}', 0.002, 1234.5)
    assert Envelope.unpack(env.pack()) == env
    neg = Envelope(None, 0.001, 99.0)
    assert Envelope.unpack(neg.pack()) == neg
