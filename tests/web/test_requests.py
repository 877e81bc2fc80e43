"""Every answer names its request: the X-Request-ID sent (when it is a sane token) or a
new one; a W3C traceparent gives the trace id of the request's log lines."""

from __future__ import annotations

import httpx

from meridian.web.requests import trace_of
from tests.fixtures.api import Tenant


async def test_the_request_id_is_answered_back(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    sent = await app_client.get(
        "/v1/contacts", headers={**tenant.headers, "X-Request-ID": "abc-123"}
    )
    assert sent.headers["x-request-id"] == "abc-123"
    made = await app_client.get("/v1/contacts", headers=tenant.headers)
    assert len(made.headers["x-request-id"]) == 32
    # A header that could forge or flood log lines is replaced, not echoed.
    for bad in ("two words", "x" * 65, "a\\nb"):
        forged = {**tenant.headers, "X-Request-ID": bad}
        resp = await app_client.get("/v1/contacts", headers=forged)
        assert resp.headers["x-request-id"] != bad
    # Errors and unauthenticated answers carry one too.
    anonymous = await app_client.get("/v1/contacts")
    assert anonymous.status_code == 401
    assert anonymous.headers["x-request-id"]


def test_trace_ids_come_from_a_valid_traceparent() -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_of(f"00-{trace}-00f067aa0ba902b7-01".encode()) == trace
    assert trace_of(f"00-{trace.upper()}-00f067aa0ba902b7-01".encode()) == trace
    for bad in (None, b"", b"garbage", b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01"):
        assert trace_of(bad) is None
