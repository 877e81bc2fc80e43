"""A bounded per-process LRU cache whose entries expire, each at its own deadline.

``cachetools.LRUCache`` keeps the size bound and the recency order; the deadline is
stored beside each value and checked on read. Per-entry lifetimes are needed (the
two-level cache jitters every entry's TTL, verified tokens live until they expire),
which ``TTLCache`` (one TTL for all) does not give, and ``TLRUCache`` would pay a heap
push on every write (about four times an LRU write) for eager expiry nobody needs: an
expired entry is dropped when read, or evicted by the size bound like any other.

Not thread-safe, and needs no lock: every user runs on one event loop thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from cachetools import LRUCache

V = TypeVar("V")


class _Store(LRUCache[Hashable, tuple[float, V] | None]):
    """The LRU store: ``(deadline, value)`` per key; a miss reads as None (raising
    KeyError through cachetools' frames would make every miss several times dearer)."""

    def __init__(self, maxsize: int, on_evict: Callable[[Hashable, V], None] | None = None) -> None:
        super().__init__(maxsize)
        self._on_evict = on_evict

    def __missing__(self, key: Hashable) -> tuple[float, V] | None:
        return None

    def popitem(self) -> tuple[Hashable, tuple[float, V] | None]:
        # cachetools calls popitem only to make room: this is the size-bound eviction.
        key, item = super().popitem()
        if self._on_evict is not None and item is not None:
            self._on_evict(key, item[1])
        return key, item


class LocalCache(Generic[V]):
    """At most ``max_entries`` values, least recently used evicted first.

    ``ttl`` is the default lifetime of an entry (None: until evicted or deleted);
    ``set`` may give each entry its own. ``clock`` is injectable for tests.
    ``on_evict(key, value)`` hears of entries the size bound pushes out (not of expiry,
    ``delete`` or ``clear``).
    """

    __slots__ = ("_clock", "_data", "_lookup", "_ttl")

    def __init__(
        self,
        max_entries: int,
        *,
        ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[Hashable, V], None] | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._data: _Store[V] = _Store(max_entries, on_evict)
        self._lookup = self._data.__getitem__  # bound once: get() is on every request
        self._ttl = math.inf if ttl is None else ttl
        self._clock = clock

    def get(self, key: Hashable) -> V | None:
        """The live value of ``key`` (now the most recently used), else None."""
        item = self._lookup(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            del self._data[key]
            return None
        return item[1]

    def set(self, key: Hashable, value: V, ttl: float | None = None) -> None:
        """Store ``value`` for ``ttl`` seconds (the cache's default when None). A
        lifetime that is already over removes any entry the key had."""
        if ttl is None:
            ttl = self._ttl
        if ttl <= 0:
            self._data.pop(key, None)
            return
        self._data[key] = (self._clock() + ttl, value)

    def delete(self, key: Hashable) -> bool:
        """Remove ``key``; True if it held a live value."""
        item = self._data.pop(key, None)
        return item is not None and item[0] > self._clock()

    def delete_where(self, predicate: Callable[[Hashable], bool]) -> int:
        """Remove every key ``predicate`` accepts (a scan: not for hot paths)."""
        doomed = [key for key in self._data if predicate(key)]
        for key in doomed:
            del self._data[key]
        return len(doomed)

    def shorten(self, limit: Callable[[V], float]) -> int:
        """Let every live entry live at most ``limit(value)`` more seconds (a scan: for
        rare events, e.g. a lost invalidation feed). Returns how many were shortened;
        recency order may change."""
        now = self._clock()
        changed = [
            (key, item)
            for key, item in self._data.items()
            if item is not None and item[0] > now + limit(item[1])
        ]
        for key, (_, value) in changed:
            self._data[key] = (now + limit(value), value)
        return len(changed)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        """Entries held, including expired ones not yet read or evicted."""
        return len(self._data)
