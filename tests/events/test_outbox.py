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
    tenant_id = uuid.UUID(tenant.id)
    async with app_role(databases, tenant.shard_id) as conn:
        for table in ("event_pending", "event_outbox", "event_sequence", "event_relay"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        async with conn.transaction():
            await conn.execute("SET LOCAL app.relay = 'on'")
            # The relay finds the tenants with events to number (their ids only) ...
            waiting = await conn.fetch("SELECT t FROM meridian_pending_tenants(1000) AS t")
            assert tenant_id in [r[0] for r in waiting]
            # ... but reads their events only inside the tenant.
            assert await conn.fetchval("SELECT count(*) FROM event_pending") == 0
            assert await conn.fetchval("SELECT count(*) FROM event_outbox") == 0
        # Nobody writes or numbers another tenant's events, even naming it.
        async with conn.transaction():
            await conn.execute(f"SET LOCAL app.tenant_id = '{uuid.uuid4()}'")
            with pytest.raises(asyncpg.PostgresError):
                await conn.execute(
                    "INSERT INTO event_pending (tenant_id, id, type, record_kind, actor_type, "
                    "data) VALUES ($1, $2, 'account.created', 'account', 'system', '{}')",
                    tenant_id,
                    uuid.uuid4(),
                )
        async with conn.transaction():
            await conn.execute(f"SET LOCAL app.tenant_id = '{uuid.uuid4()}'")
            assert await conn.fetchval("SELECT meridian_number_events($1, 100)", tenant_id) == 0
        # Events are immutable for the app role.
        async with conn.transaction():
            await conn.execute(f"SET LOCAL app.tenant_id = '{tenant.id}'")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("UPDATE event_pending SET type = 'x'")
        async with conn.transaction():
            await conn.execute(f"SET LOCAL app.tenant_id = '{tenant.id}'")
            assert await conn.fetchval("SELECT meridian_number_events($1, 100)", tenant_id) == 1
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("UPDATE event_outbox SET type = 'x'")


async def test_writes_wait_for_no_other_write_and_events_are_numbered_as_they_commit(
    app_client: httpx.AsyncClient, tenant: Tenant, databases: TestDatabases
) -> None:
    tenant_id, slow = uuid.UUID(tenant.id), uuid.uuid4()
    async with app_role(databases, tenant.shard_id) as conn:
        slow_write = conn.transaction()
        await slow_write.start()
        try:
            # A write of the tenant that has appended its event and not committed yet:
            # its event drew the lower pos.
            await conn.execute(f"SET LOCAL app.tenant_id = '{tenant.id}'")
            await conn.execute(
                "INSERT INTO event_pending (tenant_id, id, type, record_kind, actor_type, data) "
                "VALUES ($1, $2, 'account.updated', 'account', 'system', '{}')",
                tenant_id,
                slow,
            )
            # Another write commits meanwhile without waiting, and is read at once.
            resp = await asyncio.wait_for(
                app_client.post("/v1/accounts", json={"name": "Quick"}, headers=tenant.headers),
                timeout=10,
            )
            assert resp.status_code == 201, resp.text
            seen = await events(app_client, tenant)
            assert str(slow) not in [e["id"] for e in seen]
            assert seen[-1]["record"]["id"] == resp.json()["id"]
        finally:
            await slow_write.commit()
    # The slow write's event is numbered when it is seen committed: after the other.
    found = await events(app_client, tenant)
    assert found[-1]["id"] == str(slow)
    seqs = [e["seq"] for e in found]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_a_records_events_keep_the_order_of_its_writes(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    resp = await app_client.post("/v1/accounts", json={"name": "v0"}, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    account = resp.json()["id"]

    async def rename(i: int) -> None:
        resp = await app_client.patch(
            f"/v1/accounts/{account}", json={"name": f"v{i}"}, headers=tenant.headers
        )
        assert resp.status_code == 200, resp.text

    await asyncio.gather(*(rename(i) for i in range(1, 16)))
    updates = [
        e["data"]["changes"]["name"]
        for e in await events(app_client, tenant, type="account.updated", limit=100)
        if e["record"]["id"] == account
    ]
    assert len(updates) == 15
    # Whatever order the writes ran in, each event starts where the one before it ended.
    names = ["v0"] + [u["new"] for u in updates]
    assert [u["old"] for u in updates] == names[:-1]
