"""Traces: OpenTelemetry spans of each request, of every SQL statement on asyncpg (under
SQLAlchemy and on the raw read pools alike) and of every Redis command, exported over
OTLP/HTTP to the collector ``MERIDIAN_TRACES_ENDPOINT`` names. Unset (the default),
nothing is instrumented and a request pays nothing for it.

A request continues its caller's trace (W3C ``traceparent``), and the log lines it
writes carry that trace's id (``meridian.logs``). ``MERIDIAN_TRACES_SAMPLE_RATIO`` keeps
that share of the traces that start here; a caller's sampling decision is followed.

What a span holds is what the instrumentations record, bounded so no personal data
leaves: SQL text with its ``$n`` placeholders and never the parameters, Redis command
names without their arguments, and a request's route and path without its query string
(a filter may name an email address). The standard ``OTEL_*`` variables of the SDK
(``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_HEADERS``, ...) apply as usual.

The worker traces each job (a webhook delivery, a saga step) with the SQL and Redis
calls it makes. A driver's call outside any span (a pool's refresh, the rate limits'
sync ten times a second, the relay's polling) starts no trace: only requests and jobs
begin one.

The drivers are instrumented for the whole process (their classes are patched), so one
traced runtime runs per process, which is how an API or worker process runs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, Span, SpanKind, TraceState, get_current_span
from opentelemetry.util.types import Attributes
from starlette.types import ASGIApp, Receive, Scope, Send

from meridian import __version__
from meridian.settings import Settings

JobFunction = Callable[..., Awaitable[Any]]
# Probes and scrapes, every few seconds on every instance: traced, they would bury the
# requests.
_UNTRACED = "/healthz$,/readyz$,/metrics$"
# Where the ASGI instrumentation may put a request's query string.
_URL_ATTRIBUTES = ("http.url", "url.full", "http.target")
_QUERY_ATTRIBUTES = ("url.query",)


class Tracing:
    """The tracer provider of an app and the drivers' instrumentation; ``close`` sends
    what is still buffered and undoes the instrumentation."""

    def __init__(
        self,
        settings: Settings,
        *,
        service: str = "meridian-api",
        exporter: SpanExporter | None = None,
    ) -> None:
        service = os.environ.get("OTEL_SERVICE_NAME") or service
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": service, "service.version": __version__}),
            sampler=ParentBased(_NoLoneCalls(settings.traces_sample_ratio)),
        )
        self.tracer = self.provider.get_tracer("meridian")
        self.provider.add_span_processor(
            BatchSpanProcessor(exporter or OTLPSpanExporter(endpoint=settings.traces_endpoint))
        )
        self._asyncpg = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
        self._redis = RedisInstrumentor()

    @classmethod
    def of(cls, settings: Settings, *, service: str = "meridian-api") -> Tracing | None:
        return cls(settings, service=service) if settings.traces_endpoint else None

    def instrument(self, app: FastAPI) -> None:
        """An API process: each request a span, the drivers' calls inside it. To be
        called once every other middleware is added: the span's is the outermost.

        The ASGI instrumentation rather than FastAPI's: the latter finds a request's
        route by matching it against every route again, as many matches as the app has
        routes (a third of a cached read's time here); the router has matched it once,
        and ``_RouteName`` names the span from that."""
        app.add_middleware(_RouteName)
        app.add_middleware(
            OpenTelemetryMiddleware,
            tracer_provider=self.provider,
            # OpenTelemetry's own HTTP metrics: /metrics has them already.
            meter_provider=NoOpMeterProvider(),
            excluded_urls=_UNTRACED,
            server_request_hook=_without_query,
            # A span per ASGI message (the body's receive, each send) would triple the
            # spans of a request and tell nothing the request's span does not.
            exclude_spans=["receive", "send"],
        )
        self.instrument_drivers()

    def instrument_drivers(self) -> None:
        # Parameters stay out: they are the records' fields.
        self._asyncpg.instrument(tracer_provider=self.provider, capture_parameters=False)
        self._redis.instrument(tracer_provider=self.provider)

    def traced(self, job: JobFunction) -> JobFunction:
        """A worker's job function whose every run is a span (named as the job; the
        job queue knows the function by its name, which the wrapper keeps)."""

        @functools.wraps(job)
        async def run(ctx: Any, **kwargs: Any) -> Any:
            with self.tracer.start_as_current_span(f"job {job.__name__}", kind=SpanKind.CONSUMER):
                return await job(ctx, **kwargs)

        return run

    def close(self) -> None:
        self._asyncpg.uninstrument()
        self._redis.uninstrument()
        self.provider.shutdown()


class _NoLoneCalls(Sampler):
    """The root sampler: a client span without a parent (a driver's call outside any
    request or job) is dropped; other roots are kept at the ratio."""

    def __init__(self, ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return self._ratio.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"NoLoneCalls{{{self._ratio.get_description()}}}"


class _RouteName:
    """Pure ASGI middleware inside the request's span: once the router has matched the
    request, the span is named by its route template (``GET /v1/contacts/{contact_id}``,
    as OpenTelemetry's HTTP conventions want), never by its path, which holds ids."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            span = get_current_span()
            if scope["type"] == "http" and span.is_recording():
                template = getattr(scope.get("route"), "path_format", None)
                if template is None:
                    span.update_name(scope["method"])
                else:
                    span.update_name(f"{scope['method']} {template}")
                    span.set_attribute("http.route", template)


def _without_query(span: Span, scope: dict[str, Any]) -> None:
    """A request span's URL attributes, set from the whole URL when the span started,
    again without the query string."""
    if not span.is_recording() or not scope.get("query_string"):
        return
    attributes = getattr(span, "attributes", None) or {}
    for name in _URL_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str):
            span.set_attribute(name, value.split("?", 1)[0])
    for name in _QUERY_ATTRIBUTES:
        if name in attributes:
            span.set_attribute(name, "")
