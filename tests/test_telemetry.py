"""Traces through a real OTLP/HTTP exporter to a collector of the test's own: a request's
span continues its caller's trace, with its SQL and Redis spans inside it and its log
lines carrying its trace id; nothing of a record, a parameter or a query string leaves;
and untraced (the default) nothing is instrumented."""

from __future__ import annotations

import logging
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meridian import logs
from meridian.app import create_app
from meridian.settings import Settings
from meridian.telemetry import Tracing
from tests.fixtures.api import Tenant, instance
from tests.fixtures.receivers import receiver
from tests.fixtures.waiting import eventually
from tests.fixtures.worker import running_worker
from tests.webhooks.conftest import contact, subscribe
from tests.webhooks.test_delivery import FAST


@dataclass
class Collector:
    url: str
    bodies: list[bytes] = field(default_factory=list)

    def spans(self) -> list[dict[str, Any]]:
        found = []
        for body in self.bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource.resource.attributes}
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        found.append(
                            {
                                "service": service.get("service.name"),
                                "name": span.name,
                                "kind": span.kind,
                                "trace": span.trace_id.hex(),
                                "id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "attributes": {
                                    a.key: a.value.string_value or a.value.int_value
                                    for a in span.attributes
                                },
                            }
                        )
        return found


@pytest.fixture
def collector() -> Iterator[Collector]:
    """An OTLP/HTTP trace receiver on a thread: the exporter posts from its own thread
    while the app shuts down on the test's loop."""
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Collector(f"http://127.0.0.1:{server.server_port}/v1/traces", received)
    finally:
        server.shutdown()
        server.server_close()


async def test_a_request_continues_its_callers_trace_with_sql_and_redis_inside(
    settings: Settings,
    app_client: httpx.AsyncClient,
    tenant: Tenant,
    collector: Collector,
) -> None:
    email = f"traced-{uuid.uuid4().hex[:8]}@example.com"
    made = await app_client.post(
        "/v1/contacts",
        json={"first_name": "Ada", "last_name": "Traced", "email": email},
        headers=tenant.headers,
    )
    assert made.status_code == 201, made.text
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    traced = settings.model_copy(update={"traces_endpoint": collector.url})
    async with instance(traced) as client:
        resp = await client.get(
            "/v1/contacts",
            params={"filter": f"email[eq]:{email}"},
            headers={**tenant.headers, "traceparent": f"00-{trace_id}-{parent}-01"},
        )
        assert resp.status_code == 200, resp.text
        assert [c["email"] for c in resp.json()["data"]] == [email]
        assert (await client.get("/healthz")).status_code == 200
    # The app's shutdown sent what was buffered.
    spans = collector.spans()
    ours = [s for s in spans if s["trace"] == trace_id]
    server = [s for s in ours if s["kind"] == ProtoSpan.SPAN_KIND_SERVER]
    assert len(server) == 1, [(s["name"], s["kind"]) for s in ours]
    assert server[0]["parent"] == parent  # the caller's span
    assert server[0]["name"] == "GET /v1/contacts"
    assert server[0]["service"] == "meridian-api"
    systems = {s["attributes"].get("db.system") for s in ours}
    assert {"postgresql", "redis"} <= systems, [(s["name"], s["attributes"]) for s in ours]
    # Probes are not traced, and no driver call outside a request (the rate limits'
    # sync to Redis ten times a second, say) made a trace of its own.
    assert not [s for s in spans if "healthz" in s["name"]]
    lone = [s["name"] for s in spans if s["kind"] == ProtoSpan.SPAN_KIND_CLIENT and not s["parent"]]
    assert lone == []
    # Nothing of the record or of the query string left with the spans.
    for body in collector.bodies:
        assert email.encode() not in body
        assert email.split("@")[0].encode() not in body
        assert b"Ada" not in body


def test_a_log_line_inside_a_span_names_its_trace() -> None:
    tracing = Tracing(Settings(), exporter=InMemorySpanExporter())
    try:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        with tracing.provider.get_tracer("test").start_as_current_span("work") as span:
            logs.ContextFilter().filter(record)
            expected = format(span.get_span_context().trace_id, "032x")
        assert record.trace_id == expected  # type: ignore[attr-defined]
    finally:
        tracing.provider.shutdown()


def test_untraced_by_default() -> None:
    settings = Settings()
    assert settings.traces_endpoint is None
    assert Tracing.of(settings) is None
    app = create_app(settings)
    assert not [m for m in app.user_middleware if "OpenTelemetry" in m.cls.__name__]  # type: ignore[attr-defined]


async def test_a_worker_job_is_a_trace_with_its_sql_inside(
    settings: Settings, app_client: httpx.AsyncClient, tenant: Tenant, collector: Collector
) -> None:
    async with receiver() as rx:
        await subscribe(app_client, tenant, rx.url, "contact.created")
        traced = {"traces_endpoint": collector.url, **FAST}
        async with running_worker(settings, **traced):
            await contact(app_client, tenant)
            await eventually(lambda: bool(rx.requests), what="the delivery")
    spans = collector.spans()
    jobs = [s for s in spans if s["name"] == "job webhook_deliver"]
    assert jobs, sorted({s["name"] for s in spans})
    assert {s["service"] for s in jobs} == {"meridian-worker"}
    inside = [s for s in spans if s["trace"] == jobs[0]["trace"] and s is not jobs[0]]
    assert {"postgresql"} <= {s["attributes"].get("db.system") for s in inside}
    lone = [s["name"] for s in spans if s["kind"] == ProtoSpan.SPAN_KIND_CLIENT and not s["parent"]]
    assert lone == []  # the relay's polling and the readers' reads start no trace
