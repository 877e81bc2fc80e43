"""The outbox through the API: every write's events, numbered without gaps, no secrets."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.fixtures.api import Tenant
from tests.fixtures.databases import TestDatabases
from tests.fixtures.shard_db import app_role


async def events(client: httpx.AsyncClient, tenant: Tenant, **params: Any) -> list[dict[str, Any]]:
    resp = await client.get("/v1/events", params=params, headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    data: list[dict[str, Any]] = resp.json()["data"]
    return data


async def test_create_update_delete_append_events(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    resp = await app_client.post(
        "/v1/contacts",
        json={"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com"},
        headers=tenant.headers,
    )
    assert resp.status_code == 201, resp.text
    contact = resp.json()
    resp = await app_client.patch(
        f"/v1/contacts/{contact['id']}",
        json={"first_name": "Augusta", "email": "augusta@example.com"},
        headers={**tenant.headers, "If-Match": resp.headers["etag"]},
    )
    assert resp.status_code == 200, resp.text
    resp = await app_client.delete(f"/v1/contacts/{contact['id']}", headers=tenant.headers)
    assert resp.status_code == 204, resp.text

    found = [e for e in await events(app_client, tenant) if e["record"]["id"] == contact["id"]]
    assert [e["type"] for e in found] == ["contact.created", "contact.updated", "contact.deleted"]
    created, updated, deleted = found
    assert created["data"]["record"]["first_name"] == "Ada"
    assert updated["data"]["changes"] == {
        "first_name": {"old": "Ada", "new": "Augusta"},
        "email": {"changed": True},
    }
    assert deleted["data"]["record"]["first_name"] == "Augusta"
    text = str(found)
    for secret in ("ada@example.com", "augusta@example.com"):
        assert secret not in text
    assert "email" not in created["data"]["record"]
    assert created["actor"]["type"] == "client"


async def test_sequence_is_gapless_under_concurrent_writes(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    async def create(i: int) -> None:
        resp = await app_client.post(
            "/v1/accounts", json={"name": f"Acme {i}"}, headers=tenant.headers
        )
        assert resp.status_code == 201, resp.text

    await asyncio.gather(*(create(i) for i in range(30)))
    seqs = [e["seq"] for e in await events(app_client, tenant, limit=200)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert len(seqs) >= 30


async def test_the_log_is_hidden_without_the_tenant_and_the_relay_sees_only_counters(
    app_client: httpx.AsyncClient, tenant: Tenant, databases: TestDatabases
) -> None:
    resp = await app_client.post("/v1/accounts", json={"name": "A"}, headers=tenant.headers)
    assert resp.status_code == 201
    async with app_role(databases, tenant.shard_id) as conn:
        for table in ("event_outbox", "event_sequence", "event_relay"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        async with conn.transaction():
            await conn.execute("SET LOCAL app.relay = 'on'")
            # The relay finds the tenants with events to publish ...
            assert await conn.fetchval(
                "SELECT last_seq FROM event_sequence WHERE tenant_id = $1", uuid.UUID(tenant.id)
            )
            # ... but reads their events only inside the tenant.
            assert await conn.fetchval("SELECT count(*) FROM event_outbox") == 0
        # Nobody writes another tenant's log, even naming it.
        async with conn.transaction():
            await conn.execute(f"SET LOCAL app.tenant_id = '{uuid.uuid4()}'")
            with pytest.raises(asyncpg.PostgresError):
                await conn.execute(
                    "SELECT meridian_append_events($1, 'system', NULL, '[]'::jsonb)",
                    uuid.UUID(tenant.id),
                )
        # Events are immutable for the app role.
        async with conn.transaction():
            await conn.execute(f"SET LOCAL app.tenant_id = '{tenant.id}'")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("UPDATE event_outbox SET type = 'x'")
