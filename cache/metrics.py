"""Prometheus instruments of the cache (registered on a registry the caller owns)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        kw = {"registry": registry} if registry is not None else {}
        self.requests = Counter(
            "meridian_cache_requests",
            "Cache look-ups by level, kind and result.",
            ["level", "kind", "result"],
            **kw,  # type: ignore[arg-type]
        )
        self.load_seconds = Histogram(
            "meridian_cache_load_seconds",
            "Time to load a value on a miss (the source of truth).",
            ["kind"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            **kw,  # type: ignore[arg-type]
        )
        self.invalidation_lag_seconds = Histogram(
            "meridian_cache_invalidation_lag_seconds",
            "From publishing an invalidation to applying it on this instance.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
            **kw,  # type: ignore[arg-type]
        )
        self.l2_errors = Counter(
            "meridian_cache_l2_errors",
            "Failed or skipped L2 operations.",
            ["reason"],
            **kw,  # type: ignore[arg-type]
        )
        self._request_children: dict[tuple[str, str, str], Any] = {}

    def count(self, level: str, kind: str, result: str) -> None:
        """``requests.labels(...).inc()``, with the labelled child kept: ``labels()``
        takes a lock and builds a key on every call, and this runs on every cache read."""
        key = (level, kind, result)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(level, kind, result)
        child.inc()
