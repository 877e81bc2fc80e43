"""The circuit breaker: skip a backend that keeps failing instead of waiting on it.

Closed: calls go through; ``failure_threshold`` consecutive failures open it. Open: for
``cooldown`` seconds every ``allow()`` says no at once (no pile-up of timeouts). Then
half-open: exactly one caller is let through as a probe; its success closes the breaker
(and calls ``on_close``), its failure opens it for another cooldown. A probe that never
reports (its caller was cancelled) does not wedge the breaker: after ``probe_timeout``
the next caller probes instead. Any success closes it, any failure counts.

Timeouts may be told apart (``timed_out()``, with ``timeout_window`` set): a backend
that is merely busy still answers most calls, so a timeout alone does not count; only
when calls keep timing out with no success at all for ``timeout_window`` seconds (at
least ``timeout_threshold`` of them) is the backend taken for hung and the breaker
opened. Refused or broken connections (``failure()``) count at once, as before. A probe
that times out reopens it like any failed probe. Without ``timeout_window``, a timeout
is a failure like any other.

The caller reports outcomes (``allow()`` / ``success()`` / ``failure()``) rather than
handing the breaker a function to wrap, because the callers decide what counts: the
cache reports Redis errors as failures and timeouts as timeouts, the shards count
refused connections but not an exhausted pool. purgatory and aiobreaker were
considered: both wrap the call (context manager, decorator, ``call``), read the wall
clock themselves (no clock for a test to move), and their half-open state lets every
concurrent caller through; what they would replace is these few lines.

Synchronous and lock-free: every user runs on one event loop thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal


class CircuitBreaker:
    __slots__ = (
        "_clock",
        "_cooldown",
        "_failures",
        "_open_until",
        "_probe_timeout",
        "_probe_until",
        "_slow_count",
        "_slow_since",
        "_threshold",
        "_timeout_threshold",
        "_timeout_window",
        "on_close",
    )

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        cooldown: float = 2.0,
        probe_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_close: Callable[[], None] | None = None,
        timeout_window: float | None = None,
        timeout_threshold: int = 5,
    ) -> None:
        if failure_threshold < 1 or timeout_threshold < 1:
            raise ValueError("failure_threshold and timeout_threshold must be positive")
        self._threshold = failure_threshold
        self._cooldown = cooldown
        # How long one probe may take before another caller may probe instead.
        self._probe_timeout = cooldown if probe_timeout is None else probe_timeout
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._probe_until = 0.0  # while a probe is out
        self._timeout_window = timeout_window
        self._timeout_threshold = timeout_threshold
        self._slow_since: float | None = None  # first timeout since the last success
        self._slow_count = 0
        self.on_close = on_close

    @property
    def is_open(self) -> bool:
        """True unless closed (open, or half-open)."""
        return self._failures >= self._threshold

    @property
    def state(self) -> Literal["closed", "open", "half_open"]:
        if self._failures < self._threshold:
            return "closed"
        return "open" if self._clock() < self._open_until else "half_open"

    @property
    def open_until(self) -> float:
        """When the last opening's cooldown ends, on the breaker's clock (0: never
        opened since it last closed). Only a failure moves it."""
        return self._open_until if self._failures >= self._threshold else 0.0

    @property
    def retry_after(self) -> float:
        """Seconds until ``allow()`` may say yes again: 0 when it would now; else what
        is left of the cooldown, or of the probe that is out."""
        if self._failures < self._threshold:
            return 0.0
        now = self._clock()
        return max(0.0, self._open_until - now, self._probe_until - now)

    def allow(self) -> bool:
        """Whether a call may go to the backend now (in half-open, True makes the
        caller the probe: it must report ``success()`` or ``failure()``)."""
        if self._failures < self._threshold:
            return True
        now = self._clock()
        if now < self._open_until or now < self._probe_until:
            return False
        self._probe_until = now + self._probe_timeout
        return True

    def success(self) -> None:
        was_open = self._failures >= self._threshold
        self._failures = 0
        self._probe_until = 0.0
        self._slow_since = None
        self._slow_count = 0
        if was_open and self.on_close is not None:
            self.on_close()

    def failure(self) -> None:
        self._failures += 1
        self._probe_until = 0.0
        if self._failures >= self._threshold:
            self._open_until = self._clock() + self._cooldown

    def timed_out(self) -> None:
        """A call timed out: a failure only for a probe, or when nothing but timeouts
        came back for ``timeout_window`` seconds (see the module docstring)."""
        if self._timeout_window is None or self._failures >= self._threshold:
            self.failure()
            return
        now = self._clock()
        if self._slow_since is None:
            self._slow_since = now
        self._slow_count += 1
        if (
            self._slow_count >= self._timeout_threshold
            and now - self._slow_since >= self._timeout_window
        ):
            self._slow_since = None
            self._slow_count = 0
            self._failures = self._threshold
            self._probe_until = 0.0
            self._open_until = now + self._cooldown
