"""A shard that refuses new connections (SQLSTATE 55000: ALLOW_CONNECTIONS false, or a
database being dropped or renamed) is unavailable: 503 ``shard-unavailable`` with
Retry-After, for reads and writes alike, never a 500.

Each test refuses connections to a throwaway shard database of its own and allows them
again in a ``finally``; the shared test shards are never touched.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from meridian.runtime import Runtime
from meridian.settings import Settings
from sharding.engines import PoolOptions, ShardEngines, ShardInfo
from sharding.errors import ShardUnavailableError
from sharding.router import ShardRouter
from tenancy.context import TenantContext
from tests.admin.test_placement import add_dedicated_shard
from tests.fixtures.api import Tenant, token_for
from tests.fixtures.databases import APP_ROLE, TestDatabases, dsn, raw_dsn
from tests.fixtures.problems import assert_problem
from tests.fixtures.shard_db import context_of
from tests.fixtures.waiting import eventually


@dataclass
class Refusing:
    """A tenant alone on a throwaway shard, and the shard's database."""

    tenant: Tenant
    shard_id: str
    database: str


@pytest.fixture
async def refusing(
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    databases: TestDatabases,
    settings: Settings,
) -> Refusing:
    shard_id = f"refusing-{uuid.uuid4().hex[:6]}"
    database = await add_dedicated_shard(databases, settings, shard_id)
    resp = await app_client.post(
        "/admin/v1/tenants",
        json={"slug": f"r-{uuid.uuid4().hex[:10]}", "name": "Refused", "shard_id": shard_id},
        headers=admin_headers,
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    first = body["client"]
    token = await token_for(app_client, first["client_id"], first["client_secret"])
    tenant = Tenant(
        body["id"], body["slug"], shard_id, first["client_id"], first["client_secret"], token
    )
    return Refusing(tenant, shard_id, database)


@asynccontextmanager
async def connections_refused(database: str) -> AsyncIterator[None]:
    """ALLOW_CONNECTIONS false (new connections fail with 55000) and the open ones
    ended, so every use has to connect; allowed again whatever happens."""
    admin = await asyncpg.connect(raw_dsn("postgres"))
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            # Their backends end asynchronously: wait until none is left.
            await eventually(
                lambda: _no_backends(admin, database), what=f"no connections to {database}"
            )
            yield
        finally:
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()


async def _no_backends(admin: asyncpg.Connection, database: str) -> bool:
    # Client backends only: an autovacuum worker may start on the database at any time.
    left = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
        database,
    )
    return bool(left == 0)


def _runtime(client: httpx.AsyncClient) -> Runtime:
    runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
    return runtime


async def test_the_api_answers_503_for_reads_and_writes(
    app_client: httpx.AsyncClient, refusing: Refusing, settings: Settings
) -> None:
    headers = refusing.tenant.headers
    made = await app_client.post("/v1/accounts", json={"name": "Kept"}, headers=headers)
    assert made.status_code == 201, made.text
    account = f"/v1/accounts/{made.json()['id']}"
    assert (await app_client.get(account, headers=headers)).status_code == 200
    engines = _runtime(app_client).engines
    requests = [
        ("GET", "/v1/accounts", None),  # a list: the raw read pool
        # By id, the one-statement read (an id nobody has cached, unlike the one above).
        ("GET", f"/v1/accounts/{uuid.uuid4()}", None),
        ("POST", "/v1/accounts", {"name": "Refused"}),  # a write: the ORM engine
    ]
    async with connections_refused(refusing.database):
        # Every pool of this app connects anew (the shard's old connections are gone).
        await engines.dispose()
        for method, path, body in requests:
            # Closed breaker: each request has to connect, rather than be refused by it.
            engines.mark_up(refusing.shard_id)
            resp = await app_client.request(method, path, json=body, headers=headers)
            assert_problem(resp, 503, "shard-unavailable")
            assert int(resp.headers["retry-after"]) >= 1
    await asyncio.sleep(settings.shard_cooldown)  # the breaker closes again
    again = await app_client.get(account, headers=headers)
    assert again.status_code == 200, again.text
    listed = await app_client.get("/v1/accounts", headers=headers)
    assert [a["name"] for a in listed.json()["data"]] == ["Kept"]


async def test_every_way_of_connecting_maps_the_refusal(refusing: Refusing) -> None:
    """Where connections are made: an existing read pool reconnecting, a new read pool,
    the ORM engine. Each raises ShardUnavailableError caused by the 55000 refusal."""
    info = ShardInfo(refusing.shard_id, "us", dsn(refusing.database, APP_ROLE))
    engines = ShardEngines([info], PoolOptions(cooldown=0.1))
    router = ShardRouter(engines)
    tenant = context_of(refusing.tenant)
    try:
        pool = await engines.read_pool(refusing.shard_id)  # a pool with a live connection
        async with connections_refused(refusing.database):
            # Its connection's server end is gone; the pool must reconnect on next use
            # (rather than hand out a connection whose client end has not noticed yet).
            await pool.expire_connections()
            attempts = {
                "reader": _read_list(router, tenant),
                "read_one": router.read_one(tenant, "SELECT 1 AS one", ()),
                "write": _write(router, tenant),
            }
            for name, attempt in attempts.items():
                engines.mark_up(refusing.shard_id)
                with pytest.raises(ShardUnavailableError) as refused:
                    await attempt
                cause = refused.value.__cause__
                assert isinstance(cause, asyncpg.ObjectNotInPrerequisiteStateError), (name, cause)
                if name == "reader":
                    # The next attempt meets a fresh pool: connecting there is mapped too.
                    await engines.dispose()
        engines.mark_up(refusing.shard_id)  # rather than wait out the breaker's cooldown
        async with router.reader(tenant) as conn:
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await engines.dispose()


async def _read_list(router: ShardRouter, tenant: TenantContext) -> None:
    async with router.reader(tenant) as conn:
        await conn.fetchval("SELECT 1")


async def _write(router: ShardRouter, tenant: TenantContext) -> None:
    async with router.transaction(tenant, write=True) as session:
        await session.execute(text("SELECT 1"))
