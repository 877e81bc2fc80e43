"""Tenant key rotation: new writes use the new version at once, re-encryption moves the
rest under concurrent writes without losing anything, searches never miss a row, an
interrupted run resumes, and unused versions are retired."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import asyncpg
import httpx
import pytest

from meridian.encryption.reencrypt import pending, reencrypt, rotate_tenant_key
from tests.encryption.conftest import new_contact, runtime_of, search
from tests.fixtures.api import Tenant
from tests.fixtures.databases import raw_dsn
from tests.fixtures.shard_db import superuser
from tests.fixtures.waiting import eventually

if TYPE_CHECKING:
    from tests.fixtures.databases import TestDatabases


async def _versions(databases: TestDatabases, tenant: Tenant) -> dict[int | None, int]:
    async with superuser(databases, tenant.shard_id) as conn:
        rows = await conn.fetch(
            "SELECT enc_version, count(*) FROM contact WHERE tenant_id = $1 GROUP BY 1",
            uuid.UUID(tenant.id),
        )
    return {r[0]: r[1] for r in rows}


async def test_rotation_under_concurrent_writes_and_searches(
    app_client: httpx.AsyncClient, tenant: Tenant, databases: TestDatabases
) -> None:
    rt = runtime_of(app_client)
    ctx = await rt.directory.load(uuid.UUID(tenant.id))
    assert ctx is not None
    made = [
        await new_contact(app_client, tenant, email=f"c{i}@old.example", phone=f"+1 555 01{i:02d}")
        for i in range(60)
    ]
    assert await _versions(databases, tenant) == {1: 60}

    assert await rotate_tenant_key(rt, ctx.tenant_id, propagation=0) == 2
    # New writes use the new version at once.
    fresh = await new_contact(app_client, tenant, email="fresh@new.example")
    assert (await _versions(databases, tenant))[2] == 1

    stop = asyncio.Event()
    written: list[dict[str, str]] = [fresh]
    misses: list[str] = []

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            # New contacts, and changes to old ones (a PATCH re-encrypts the whole row).
            written.append(await new_contact(app_client, tenant, email=f"w{n}@during.example"))
            target = made[n % len(made)]
            changed = await app_client.patch(
                f"/v1/contacts/{target['id']}",
                json={"title": f"t{n}"},
                headers=tenant.headers,
            )
            assert changed.status_code == 200, changed.text
            n += 1

    async def searcher() -> None:
        n = 0
        while not stop.is_set():
            target = made[n % len(made)]
            if await search(app_client, tenant, email=target["email"]) != [target["id"]]:
                misses.append(target["email"])
            n += 1

    def pause_midway(table: str, done: int, total: int) -> None:
        if table == "contact" and done >= 21:
            raise Interrupted

    tasks = [asyncio.create_task(writer()), asyncio.create_task(searcher())]
    try:
        # Stopped a third of the way (a re-encryption resumes where it stopped), so that
        # writes and searches certainly run while the rows are on both versions, however
        # fast the re-encryption is next to them.
        with pytest.raises(Interrupted):
            await reencrypt(rt, ctx, batch_size=7, progress=pause_midway)
        assert set(await _versions(databases, tenant)) == {1, 2}
        at_pause = len(written)
        await eventually(lambda: len(written) >= at_pause + 3, what="writes mid-rotation")
        result = await reencrypt(rt, ctx, batch_size=7)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert misses == []
    assert result.rows["contact"] > 0
    assert result.retired == [1]
    assert set(await _versions(databases, tenant)) == {2}
    assert await pending(rt, ctx) == {
        "contact": {},
        "account": {},
        "lead": {},
        "webhook": {},
        "custom_value": {},
    }
    # Nothing lost: every contact reads back and is found by its own email.
    for contact in [*made, *written]:
        got = await app_client.get(f"/v1/contacts/{contact['id']}", headers=tenant.headers)
        assert got.status_code == 200
        assert got.json()["email"] == contact["email"]
        assert await search(app_client, tenant, email=contact["email"]) == [contact["id"]]
    assert await search(app_client, tenant, phone=made[5]["phone"]) == [made[5]["id"]]
    # As committed in the control plane: this instance's cached list of versions may
    # lag by up to key_versions_ttl (a search that ran during the retirement reloads it).
    control = await asyncpg.connect(raw_dsn(databases.control))
    try:
        states = await control.fetch(
            "SELECT version, state FROM tenant_key WHERE tenant_id = $1 ORDER BY version",
            ctx.tenant_id,
        )
    finally:
        await control.close()
    assert [tuple(r) for r in states] == [(1, "destroyed"), (2, "active")]


class Interrupted(Exception):
    pass


async def test_an_interrupted_reencryption_resumes(
    app_client: httpx.AsyncClient, tenant: Tenant, databases: TestDatabases
) -> None:
    rt = runtime_of(app_client)
    ctx = await rt.directory.load(uuid.UUID(tenant.id))
    assert ctx is not None
    made = [await new_contact(app_client, tenant, email=f"r{i}@x.example") for i in range(25)]
    account = await app_client.post(
        "/v1/accounts", json={"name": "A", "tax_id": "12-3456789"}, headers=tenant.headers
    )
    await rotate_tenant_key(rt, ctx.tenant_id, propagation=0)

    def crash_after_two_batches(table: str, done: int, total: int) -> None:
        if done >= 10:
            raise Interrupted

    with pytest.raises(Interrupted):
        await reencrypt(rt, ctx, batch_size=5, progress=crash_after_two_batches)
    assert await _versions(databases, tenant) == {2: 10, 1: 15}
    # Both versions are live: every row is readable and findable meanwhile.
    for contact in made:
        assert await search(app_client, tenant, email=contact["email"]) == [contact["id"]]
    seen: list[int] = []
    result = await reencrypt(rt, ctx, batch_size=5, progress=lambda t, d, n: seen.append(n))
    assert result.rows == {"contact": 15, "account": 1}  # finished rows were skipped
    assert result.retired == [1]
    assert await _versions(databases, tenant) == {2: 25}
    got = await app_client.get(f"/v1/accounts/{account.json()['id']}", headers=tenant.headers)
    assert got.json()["tax_id"] == "12-3456789"
