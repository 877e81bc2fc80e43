"""A circuit breaker for the L2 (Redis): when it is slow or down, skip it.

Closed: calls go through. After ``failure_threshold`` consecutive failures it opens for
``cooldown`` seconds: calls are skipped at once (no pile-up of timeouts). Then one probe
is let through (half-open); its success closes the breaker.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        cooldown: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failure_threshold
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        self.on_close: Callable[[], None] | None = None

    @property
    def is_open(self) -> bool:
        return self._failures >= self._threshold

    def allow(self) -> bool:
        """Whether a call may go to the backend now."""
        if self._failures < self._threshold:
            return True
        if self._clock() < self._open_until or self._probing:
            return False
        self._probing = True  # half-open: exactly one probe at a time
        return True

    def success(self) -> None:
        was_open = self._failures >= self._threshold
        self._failures = 0
        self._probing = False
        if was_open and self.on_close is not None:
            self.on_close()

    def failure(self) -> None:
        self._failures += 1
        self._probing = False
        if self._failures >= self._threshold:
            self._open_until = self._clock() + self._cooldown
