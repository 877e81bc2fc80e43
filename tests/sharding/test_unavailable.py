"""A tenant whose shard cannot take it answers 503 problem+json, and only that tenant:
one not resident on the shard its directory entry names, and one whose directory entry
names a shard the topology does not have. Each case is made by hand in the databases
(as their owner), undone afterwards, and the tenant is served again.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx

from tests.fixtures.api import Tenant
from tests.fixtures.databases import TestDatabases, raw_dsn
from tests.fixtures.problems import assert_problem
from tests.fixtures.shard_db import superuser


async def _hit_shard(client: httpx.AsyncClient, tenant: Tenant) -> list[httpx.Response]:
    """A write and a read no cache can answer: both must reach the tenant's shard."""
    unique = uuid.uuid4().hex
    return [
        await client.post("/v1/accounts", json={"name": unique}, headers=tenant.headers),
        await client.get("/v1/accounts", params={"name": unique}, headers=tenant.headers),
    ]


async def _served(client: httpx.AsyncClient, tenant: Tenant) -> bool:
    return [r.status_code for r in await _hit_shard(client, tenant)] == [201, 200]


async def _forget_directory_entry(client: httpx.AsyncClient, tenant: Tenant) -> None:
    """What the tools that change a directory entry do next (suspension, resumption and
    moves call the same): every instance drops its cached copy."""
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    await runtime.directory.invalidate(uuid.UUID(tenant.id))


@asynccontextmanager
async def _control(databases: TestDatabases) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(raw_dsn(databases.control))
    try:
        yield conn
    finally:
        await conn.close()


async def test_a_tenant_not_resident_on_its_shard_is_503(
    app_client: httpx.AsyncClient,
    databases: TestDatabases,
    tenant: Tenant,
    other_tenant: Tenant,
) -> None:
    assert await _served(app_client, tenant)
    tenant_id = uuid.UUID(tenant.id)
    async with superuser(databases, tenant.shard_id) as shard:
        row = await shard.fetchrow(
            "DELETE FROM tenant_residency WHERE tenant_id = $1 RETURNING *", tenant_id
        )
        assert row is not None
        try:
            for resp in await _hit_shard(app_client, tenant):
                # The router re-reads the directory once; it names the same shard.
                assert_problem(resp, 503, "unavailable")
                assert resp.headers["retry-after"] == "1"
            assert await _served(app_client, other_tenant)  # nobody else is affected
        finally:
            columns = list(row.keys())
            await shard.execute(
                f"INSERT INTO tenant_residency ({', '.join(columns)})"
                f" VALUES ({', '.join(f'${i}' for i in range(1, len(columns) + 1))})",
                *row.values(),
            )
    assert await _served(app_client, tenant)


async def test_a_directory_entry_naming_an_unknown_shard_is_503(
    app_client: httpx.AsyncClient,
    databases: TestDatabases,
    tenant: Tenant,
    other_tenant: Tenant,
) -> None:
    assert await _served(app_client, tenant)
    tenant_id = uuid.UUID(tenant.id)
    async with _control(databases) as control:
        # The foreign key to `shard` forbids this; an entry left behind by a shard row
        # removed by hand is what it stands for. Triggers (and so the key) are skipped
        # for this session only.
        await control.execute("SET session_replication_role = replica")
        moved = await control.execute(
            "UPDATE tenant_directory SET shard_id = 'nowhere-1' WHERE tenant_id = $1", tenant_id
        )
        assert moved == "UPDATE 1"
        await _forget_directory_entry(app_client, tenant)
        try:
            for resp in await _hit_shard(app_client, tenant):
                assert_problem(resp, 503, "shard-unavailable")
            assert await _served(app_client, other_tenant)
        finally:
            await control.execute(
                "UPDATE tenant_directory SET shard_id = $2 WHERE tenant_id = $1",
                tenant_id,
                tenant.shard_id,
            )
            await _forget_directory_entry(app_client, tenant)
    assert await _served(app_client, tenant)
