"""A ciphertext moved to another row, column or tenant does not decrypt: the API answers
500 field-unreadable and logs an event (without plaintext), never another row's data."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

import httpx
import pytest

from meridian import logs
from tests.encryption.conftest import new_contact
from tests.fixtures.api import Tenant, onboard
from tests.fixtures.problems import assert_problem
from tests.fixtures.shard_db import superuser

if TYPE_CHECKING:
    from tests.fixtures.databases import TestDatabases


async def _copy(
    databases: TestDatabases, shard: str, src: str, src_col: str, dst: str, dst_col: str
) -> None:
    async with superuser(databases, shard) as conn:
        # Column names are the test's own constants.
        await conn.execute(
            f"UPDATE contact SET {dst_col} = (SELECT {src_col} FROM contact WHERE id = $1) "
            "WHERE id = $2",
            uuid.UUID(src),
            uuid.UUID(dst),
        )


async def _assert_unreadable(
    client: httpx.AsyncClient, tenant: Tenant, contact_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    request = f"tamper-{uuid.uuid4().hex[:8]}"
    trace = uuid.uuid4().hex
    headers = {
        **tenant.headers,
        "X-Request-ID": request,
        "traceparent": f"00-{trace}-{uuid.uuid4().hex[:16]}-01",
    }
    # The filter the deployment's log handler has (meridian.logs), on pytest's.
    caplog.handler.addFilter(logs.ContextFilter())
    with caplog.at_level(logging.ERROR, logger="meridian.encryption"):
        got = await client.get(f"/v1/contacts/{contact_id}", headers=headers)
    assert_problem(got, 500, "field-unreadable")
    assert got.headers["x-request-id"] == request
    events = [r for r in caplog.records if r.getMessage() == "encrypted field unreadable"]
    assert events
    assert events[-1].row_id == contact_id
    # The event names its request, trace, tenant and shard (meridian.logs).
    event = vars(events[-1])
    assert (event["request_id"], event["trace_id"]) == (request, trace)
    assert (event["tenant_id"], event["shard_id"]) == (tenant.id, tenant.shard_id)
    # Neither the answer nor the event carries the plaintext.
    assert "victim" not in got.text
    assert "victim" not in repr(vars(events[-1]))
    listed = await client.get("/v1/contacts", headers=tenant.headers)
    assert_problem(listed, 500, "field-unreadable")


async def test_ciphertext_moved_to_another_row(
    app_client: httpx.AsyncClient,
    tenant: Tenant,
    databases: TestDatabases,
    caplog: pytest.LogCaptureFixture,
) -> None:
    victim = await new_contact(app_client, tenant, email="victim@example.com")
    target = await new_contact(app_client, tenant, last_name="Thief", email="thief@example.com")
    await _copy(databases, tenant.shard_id, victim["id"], "email_enc", target["id"], "email_enc")
    await _assert_unreadable(app_client, tenant, target["id"], caplog)


async def test_ciphertext_moved_to_another_column(
    app_client: httpx.AsyncClient,
    tenant: Tenant,
    databases: TestDatabases,
    caplog: pytest.LogCaptureFixture,
) -> None:
    victim = await new_contact(app_client, tenant, email="victim@example.com", phone="+1 555 0100")
    await _copy(databases, tenant.shard_id, victim["id"], "email_enc", victim["id"], "phone_enc")
    await _assert_unreadable(app_client, tenant, victim["id"], caplog)


async def test_ciphertext_moved_to_another_tenant(
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tenant: Tenant,
    databases: TestDatabases,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A neighbour on the same shard, so that one UPDATE can move the bytes across.
    neighbour = await onboard(
        app_client, admin_headers, region="us", slug=f"n-{uuid.uuid4().hex[:12]}"
    )
    assert neighbour.shard_id == tenant.shard_id
    victim = await new_contact(app_client, tenant, email="victim@example.com")
    target = await new_contact(app_client, neighbour, email="decoy@example.com")
    await _copy(databases, tenant.shard_id, victim["id"], "email_enc", target["id"], "email_enc")
    await _assert_unreadable(app_client, neighbour, target["id"], caplog)
    # Even moved to the same row id: the tenant is part of the associated data too.
    ok = await app_client.get(f"/v1/contacts/{victim['id']}", headers=tenant.headers)
    assert ok.json()["email"] == "victim@example.com"
