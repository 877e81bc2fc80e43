"""Tenants on two PostgreSQL servers: each tenant's rows live only on its own server,
and a server that goes down fails only its own tenants, fast (503 + Retry-After).

Tenant A sits on shard us-1 of the main server; tenant B on a shard of a throwaway
cluster. Their app has its own control plane, so registering (and killing) the extra
shard never touches the session-wide app's topology.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg
import httpx
import pytest

from meridian.app import create_app
from meridian.operations import add_shard, create_admin_client, migrate_all
from meridian.settings import ShardConfig
from meridian_dev.postgres import LocalCluster
from tests.fixtures.api import AdminToken, Tenant, onboard
from tests.fixtures.databases import APP_ROLE, PG_PORT, dsn, raw_dsn, recreate_database
from tests.fixtures.pgcluster import StartCluster
from tests.fixtures.problems import assert_problem
from tests.fixtures.waiting import eventually

if TYPE_CHECKING:  # a plain import would make pytest try to collect it as a test class
    from tests.fixtures.databases import TestDatabases


pytestmark = pytest.mark.slow

REMOTE_SHARD = "xs-1"
REMOTE_REGION = "xs"  # a region of its own, so placement never picks it by accident
CONNECT_TIMEOUT = 5.0
COOLDOWN = 2.0


@dataclass
class Servers:
    client: httpx.AsyncClient
    admin: AdminToken
    local_db: str  # shard us-1's database on the main server
    remote: LocalCluster
    remote_db: str


@dataclass
class TwoServers(Servers):
    a: Tenant  # on us-1, the main server
    b: Tenant  # on xs-1, the throwaway server


@pytest.fixture(scope="module")
def remote_server(pg_clusters: StartCluster) -> LocalCluster:
    return pg_clusters()


@pytest.fixture(scope="module")
async def servers(databases: TestDatabases, remote_server: LocalCluster) -> AsyncIterator[Servers]:
    # Named after the worker's databases, so the session's clean-up drops it if this
    # module's own clean-up does not run.
    control_db, remote_db = f"{databases.prefix}_x2_control", f"{databases.prefix}_x2_remote"
    region, local_db = databases.shards["us-1"]
    await recreate_database(control_db)
    await asyncio.to_thread(remote_server.ensure_database, remote_db)
    settings = databases.settings(
        control_dsn=dsn(control_db, APP_ROLE),
        control_admin_dsn=dsn(control_db),
        shards=[
            ShardConfig(
                id="us-1", region=region, dsn=dsn(local_db, APP_ROLE), admin_dsn=dsn(local_db)
            )
        ],
        shard_connect_timeout=CONNECT_TIMEOUT,
        shard_cooldown=COOLDOWN,
    )
    await migrate_all(settings)
    # The extra shard the way an operator adds one (`meridian shards add`): migrate it,
    # then register it in the topology.
    await add_shard(
        settings,
        shard_id=REMOTE_SHARD,
        region=REMOTE_REGION,
        dsn=remote_server.dsn(remote_db, APP_ROLE),
        admin_dsn=remote_server.dsn(remote_db),
        capacity=100,
    )

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            client.app = app  # type: ignore[attr-defined]
            admin = await create_admin_client(settings, "two-servers admin")
            token = AdminToken(client, admin.client_id, admin.client_secret)
            yield Servers(client, token, local_db, remote_server, remote_db)
    conn = await asyncpg.connect(raw_dsn("postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{control_db}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def two_servers(servers: Servers) -> TwoServers:
    """A fresh tenant on each server, so each test sees only its own rows."""
    run = uuid.uuid4().hex[:8]
    admin = await servers.admin.headers()
    a = await onboard(servers.client, admin, shard_id="us-1", slug=f"two-a-{run}")
    b = await onboard(servers.client, admin, shard_id=REMOTE_SHARD, slug=f"two-b-{run}")
    assert (a.shard_id, b.shard_id) == ("us-1", REMOTE_SHARD)
    return TwoServers(**vars(servers), a=a, b=b)


async def _create_accounts(client: httpx.AsyncClient, tenant: Tenant, names: list[str]) -> None:
    for name in names:
        resp = await client.post("/v1/accounts", json={"name": name}, headers=tenant.headers)
        assert resp.status_code == 201, resp.text


async def _rows(url: str, table: str, tenants: list[str]) -> list[tuple[str, str]]:
    """(tenant_id, port) of every row of the tenants, read as superuser (RLS bypassed)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            f"SELECT tenant_id::text AS t, inet_server_port()::text AS p FROM {table} "
            "WHERE tenant_id = ANY($1::uuid[])",
            tenants,
        )
    finally:
        await conn.close()
    return [(r["t"], r["p"]) for r in rows]


async def test_each_tenants_rows_live_only_on_its_own_server(two_servers: TwoServers) -> None:
    s = two_servers
    await _create_accounts(s.client, s.a, ["A one", "A two"])
    await _create_accounts(s.client, s.b, ["B one", "B two", "B three"])
    for tenant, expected in ((s.a, {"A one", "A two"}), (s.b, {"B one", "B two", "B three"})):
        listed = await s.client.get("/v1/accounts", headers=tenant.headers)
        assert listed.status_code == 200, listed.text
        assert {row["name"] for row in listed.json()["data"]} == expected

    both = [s.a.id, s.b.id]
    main_url = raw_dsn(s.local_db)
    remote_url = s.remote.url(s.remote_db)
    assert s.remote.port != PG_PORT
    for table, a_count, b_count in (("account", 2, 3), ("tenant_residency", 1, 1)):
        on_main = await _rows(main_url, table, both)
        on_remote = await _rows(remote_url, table, both)
        assert on_main == [(s.a.id, str(PG_PORT))] * a_count, table
        assert on_remote == [(s.b.id, str(s.remote.port))] * b_count, table

    # The shard databases themselves exist on one server each.
    main = await asyncpg.connect(raw_dsn("postgres"))
    try:
        assert not await main.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", s.remote_db)
    finally:
        await main.close()
    found = await asyncio.to_thread(
        s.remote.sql, f"SELECT count(*) FROM pg_database WHERE datname = '{s.local_db}'"
    )
    assert found == "0"


def _assert_503(resp: httpx.Response) -> None:
    assert_problem(resp, 503, "shard-unavailable")
    assert int(resp.headers["retry-after"]) >= 1


async def _hit_shard(client: httpx.AsyncClient, tenant: Tenant) -> list[httpx.Response]:
    """Requests that must reach the tenant's shard: a write, and a read no cache holds
    (cached reads may rightly be served while the shard is down)."""
    unique = uuid.uuid4().hex
    return [
        await client.post("/v1/accounts", json={"name": unique}, headers=tenant.headers),
        await client.get("/v1/accounts", params={"name": unique}, headers=tenant.headers),
    ]


def _down_until(client: httpx.AsyncClient, shard_id: str) -> float:
    """When the shard's breaker closes (time.monotonic()); it is reset by every failed
    attempt to reach the shard, so an unchanged value means nobody tried to."""
    engines = client.app.state.runtime.engines  # type: ignore[attr-defined]
    breaker = engines._breakers.get(shard_id)  # a white-box look: no public accessor
    return breaker.open_until if breaker is not None else 0.0


async def test_shard_down_fails_only_its_tenants_fast(two_servers: TwoServers) -> None:
    s = two_servers
    await _create_accounts(s.client, s.b, ["B survives"])
    for tenant in (s.a, s.b):  # both shards healthy, both pools warm
        assert [r.status_code for r in await _hit_shard(s.client, tenant)] == [201, 200]
    assert _down_until(s.client, REMOTE_SHARD) == 0.0

    await asyncio.to_thread(s.remote.stop, "immediate")
    try:
        # The first requests meet the dead server: 503, and the breaker opens.
        for resp in await _hit_shard(s.client, s.b):
            _assert_503(resp)
        opened = _down_until(s.client, REMOTE_SHARD)
        assert opened > 0

        # While it is open, requests are answered without trying the shard (so without
        # waiting for a connect timeout): the breaker's deadline is not pushed back by a
        # new failure until the cooldown is over. Tenant A is untouched throughout.
        for _ in range(5):
            before = _down_until(s.client, REMOTE_SHARD)
            for resp in await _hit_shard(s.client, s.b):
                _assert_503(resp)
            after = _down_until(s.client, REMOTE_SHARD)
            # A slow machine may outlast the cooldown, and then one retry is right.
            assert after == before or time.monotonic() >= before, (before, after)
            assert [r.status_code for r in await _hit_shard(s.client, s.a)] == [201, 200]

        # The instance stays in service (other tenants) and names what is down.
        ready = await s.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        checks = ready.json()["checks"]
        assert checks[f"shard:{REMOTE_SHARD}"].startswith("down")
        assert checks["shard:us-1"] == "ok"
        assert checks["control"] == "ok"
    finally:
        await asyncio.to_thread(s.remote.start)

    # Back up: B recovers by itself once the cooldown has passed.
    async def recovered() -> bool:
        statuses = [r.status_code for r in await _hit_shard(s.client, s.b)]
        assert set(statuses) <= {201, 200, 503}, statuses
        return statuses == [201, 200]

    await eventually(recovered, interval=0.2, what="tenant B being served again")
    listed = await s.client.get("/v1/accounts", params={"name": "B survives"}, headers=s.b.headers)
    assert [row["name"] for row in listed.json()["data"]] == ["B survives"]
