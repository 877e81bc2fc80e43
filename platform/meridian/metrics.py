"""Prometheus metrics of a Meridian process, aggregated across its worker processes.

Instruments (``Counter``, ``Histogram``) are made once per app on the app's registry. With
``PROMETHEUS_MULTIPROC_DIR`` set (``meridian serve --workers N`` sets it), every process
writes its values to files there and ``/metrics`` answers what all of them counted,
whichever process is asked: prometheus_client's multiprocess mode. Only counters and
histograms are kept that way; what is a state rather than a count (is a shard up, how
far behind is a move) is read when scraped (``health.live_families``), so a dead
worker's last view never lingers.

Label values are bounded: a route is its path template (``/v1/contacts/{contact_id}``),
never the path, and a tenant is no label of the request metrics. How much each tenant
calls is counted per tenant but shown only for the busiest ``top_tenants``
(``meridian_tenant_requests_total``): a dashboard finds the noisy neighbour without one
time series per tenant.
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
TENANT_REQUESTS = "meridian_tenant_requests"
UNMATCHED = "unmatched"
# From a cached read (~0.3 ms) to a slow export page: p99 alerts sit between 0.25 and 1.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess_dir(path: Path) -> None:
    """Before the worker processes start: the folder exists and holds no file of an
    earlier run (whose pids' counts would be added to this one's)."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


class Metrics:
    """A process's instruments (an API instance's or a worker's), on the runtime's
    registry (one per runtime: several in one process, as in the tests, do not
    collide). A domain adds its own with ``counter``."""

    def __init__(self, registry: CollectorRegistry, *, top_tenants: int) -> None:
        self.registry = registry
        self.top_tenants = top_tenants
        self.requests = Counter(
            "meridian_http_requests",
            "Requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "meridian_http_request_duration_seconds",
            "Time from a request's arrival to the start of its answer (a stream's first "
            "byte, not its end), by route template.",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.tenant_requests = Counter(
            TENANT_REQUESTS,
            "Requests per tenant; only the busiest tenants are exposed.",
            ["tenant"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "meridian_rate_limited",
            "Requests refused by a rate limit (429), by the quota that refused them.",
            ["quota"],
            registry=registry,
        )
        self.tenant_busy = Counter(
            "meridian_tenant_busy",
            "Requests refused because their tenant held all the shard connections it may "
            "(503 tenant-busy).",
            registry=registry,
        )
        # labels() takes a lock and builds a key on each call; these run on every request.
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._tenants: dict[UUID, Any] = {}
        self._counters: dict[str, Counter] = {}

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """The counter of that name on this registry, made at its first use."""
        found = self._counters.get(name)
        if found is None:
            found = self._counters[name] = Counter(
                name, documentation, labels, registry=self.registry
            )
        return found

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, str(status))
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(*key),
                self.duration.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def tenant_request(self, tenant_id: UUID) -> None:
        child = self._tenants.get(tenant_id)
        if child is None:
            child = self._tenants[tenant_id] = self.tenant_requests.labels(str(tenant_id))
        child.inc()

    def families(self) -> Iterator[Metric]:
        """What ``/metrics`` shows of the counts: every process's, when several share
        the multiprocess folder, else this registry's; the per-tenant family cut to
        its busiest tenants."""
        folder = multiprocess_dir()
        if folder is not None:
            source = CollectorRegistry()
            MultiProcessCollector(source, path=folder)  # type: ignore[no-untyped-call]
            found: Iterable[Metric] = source.collect()
        else:
            found = self.registry.collect()
        for family in found:
            if family.name == TENANT_REQUESTS:
                family = top(family, self.top_tenants)
            yield family


def top(family: Metric, n: int) -> Metric:
    """The family with only its ``n`` largest counts (``_total`` samples; a counter's
    ``_created`` samples of those tenants too)."""
    totals = [s for s in family.samples if s.name.endswith("_total")]
    kept = {id(s) for s in heapq.nlargest(n, totals, key=lambda s: s.value)}
    tenants = {s.labels["tenant"] for s in totals if id(s) in kept}
    cut = Metric(family.name, family.documentation, family.type)
    cut.samples = [s for s in family.samples if s.labels.get("tenant") in tenants]
    return cut


class RequestMetrics:
    """Pure ASGI middleware: each answered request's status and duration, by its
    route template (set in the scope by the router; ``unmatched`` for a 404 that no
    route took, so a scan of random paths adds no series). The instruments are the
    runtime's, which the app's lifespan makes after the middleware is built."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        answered: list[tuple[int, float]] = []

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered.append((message["status"], time.perf_counter() - start))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # An app that raised before answering: the server answers 500.
            status, seconds = answered[0] if answered else (500, time.perf_counter() - start)
            route = scope.get("route")
            template = getattr(route, "path_format", None) or UNMATCHED
            metrics: Metrics = scope["app"].state.runtime.metrics
            metrics.observe(scope["method"], template, status, seconds)
