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

The drivers are instrumented for the whole process (their classes are patched), so one
traced app runs per process, which is how an API process runs.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span

from meridian import __version__
from meridian.settings import Settings

# Probes and scrapes, every few seconds on every instance: traced, they would bury the
# requests.
_UNTRACED = "/healthz$,/readyz$,/metrics$"
# Where the ASGI instrumentation may put a request's query string.
_URL_ATTRIBUTES = ("http.url", "url.full", "http.target")
_QUERY_ATTRIBUTES = ("url.query",)


class Tracing:
    """The tracer provider of an app and the drivers' instrumentation; ``close`` sends
    what is still buffered and undoes the instrumentation."""

    def __init__(self, settings: Settings, exporter: SpanExporter | None = None) -> None:
        service = os.environ.get("OTEL_SERVICE_NAME") or "meridian-api"
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": service, "service.version": __version__}),
            sampler=ParentBased(TraceIdRatioBased(settings.traces_sample_ratio)),
        )
        self.provider.add_span_processor(
            BatchSpanProcessor(exporter or OTLPSpanExporter(endpoint=settings.traces_endpoint))
        )
        self._asyncpg = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
        self._redis = RedisInstrumentor()

    @classmethod
    def of(cls, settings: Settings) -> Tracing | None:
        return cls(settings) if settings.traces_endpoint else None

    def instrument(self, app: FastAPI) -> None:
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self.provider,
            excluded_urls=_UNTRACED,
            server_request_hook=_without_query,
        )
        # Parameters stay out: they are the records' fields.
        self._asyncpg.instrument(tracer_provider=self.provider, capture_parameters=False)
        self._redis.instrument(tracer_provider=self.provider)

    def close(self) -> None:
        self._asyncpg.uninstrument()
        self._redis.uninstrument()
        self.provider.shutdown()


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
