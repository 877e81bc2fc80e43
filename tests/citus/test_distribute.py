"""`meridian shards distribute`: a shard that ran as plain PostgreSQL, with a tenant's
rows, becomes a Citus shard in place once its database runs on a Citus coordinator; the
API then serves the same rows from the workers. Refused, changing nothing, while it
cannot be done safely; a second run changes nothing.

The shard is a database of its own on the test cluster's coordinator, made without the
citus extension (so its migration lays it out for PostgreSQL), in a control plane of its
own, so the other tests' topology never sees it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg
import httpx
import pytest

from meridian.app import create_app
from meridian.operations import add_shard, create_admin_client, distribute_shard, migrate_all
from meridian.settings import Settings
from sharding.citus import CitusAdminError
from tests.citus.conftest import CitusApi
from tests.citus.shard_admin import shard_admin_dsn
from tests.fixtures.api import AdminToken, Tenant, onboard
from tests.fixtures.citus import CitusCluster
from tests.fixtures.databases import APP_ROLE, dsn, raw_dsn, recreate_database
from tests.fixtures.dev_platform import MERIDIAN, clean_env

if TYPE_CHECKING:  # a plain import would make pytest try to collect it as a test class
    from tests.fixtures.databases import TestDatabases

pytestmark = pytest.mark.slow

SHARD = "plain-1"


@dataclass
class PlainShard:
    client: httpx.AsyncClient
    app: object
    admin: AdminToken
    settings: Settings
    cluster: CitusCluster
    database: str

    def sql(self, node: int, statement: str, database: str | None = None) -> str:
        """As the superuser on node ``node`` (0: the coordinator)."""
        return self.cluster.nodes[node].sql(statement, database or self.database)


@pytest.fixture
async def plain_shard(databases: TestDatabases, citus_api: CitusApi) -> AsyncIterator[PlainShard]:
    cluster = citus_api.cluster
    database = f"meridian_plain_{uuid.uuid4().hex[:8]}"
    # No citus extension: the migration sees PostgreSQL and distributes nothing.
    await asyncio.to_thread(
        cluster.coordinator.sql, f"CREATE DATABASE {database} OWNER {cluster.owner}"
    )
    control_db = f"{databases.prefix}_plain_control"
    await recreate_database(control_db)
    settings = databases.settings(
        control_dsn=dsn(control_db, APP_ROLE), control_admin_dsn=dsn(control_db), shards=[]
    )
    await migrate_all(settings)
    engine = await add_shard(
        settings,
        shard_id=SHARD,
        region="ci",
        dsn=cluster.coordinator.dsn(database, APP_ROLE),
        admin_dsn=cluster.coordinator.dsn(database, cluster.owner),
    )
    assert engine == "postgres"
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                made = await create_admin_client(settings, "plain admin")
                token = AdminToken(c, made.client_id, made.client_secret)
                yield PlainShard(c, app, token, settings, cluster, database)
    finally:
        conn = await asyncpg.connect(raw_dsn("postgres"))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{control_db}" WITH (FORCE)')
        finally:
            await conn.close()


def _cli(shard: PlainShard, *args: str) -> subprocess.CompletedProcess[str]:
    settings = shard.settings
    env = clean_env(
        MERIDIAN_CONTROL_DSN=settings.control_dsn,
        MERIDIAN_CONTROL_ADMIN_DSN=settings.control_migrate_dsn,
    )
    return subprocess.run(
        [str(MERIDIAN), *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )


async def _refused(shard: PlainShard, says: str) -> None:
    done = await asyncio.to_thread(_cli, shard, "shards", "distribute", SHARD)
    assert done.returncode == 1, done.stdout
    assert done.stderr.startswith("meridian shards distribute: ")
    assert says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


async def _distributed_tables(shard: PlainShard) -> int:
    out = await asyncio.to_thread(shard.sql, 0, "SELECT count(*) FROM pg_dist_partition")
    return int(out)


async def _everything(client: httpx.AsyncClient, tenant: Tenant) -> dict[str, list[object]]:
    """Every account and contact of the tenant, as the API lists them."""
    found: dict[str, list[object]] = {}
    for kind in ("accounts", "contacts"):
        resp = await client.get(f"/v1/{kind}", params={"limit": 100}, headers=tenant.headers)
        assert resp.status_code == 200, resp.text
        assert resp.json()["next_cursor"] is None
        found[kind] = sorted(resp.json()["data"], key=lambda r: r["id"])
    return found


async def _become_citus(shard: PlainShard) -> None:
    """What an operator does on the servers: the extension on every node (a superuser),
    the workers registered on the coordinator."""
    cluster = shard.cluster
    for n, worker in enumerate(cluster.workers, start=1):
        await asyncio.to_thread(
            worker.sql, f"CREATE DATABASE {shard.database} OWNER {cluster.owner}"
        )
        await asyncio.to_thread(shard.sql, n, "CREATE EXTENSION citus")
    await asyncio.to_thread(shard.sql, 0, "CREATE EXTENSION citus")


async def _register_workers(shard: PlainShard) -> None:
    coordinator = shard.cluster.coordinator
    await asyncio.to_thread(
        shard.sql,
        0,
        f"SELECT citus_set_coordinator_host('{coordinator.host}', {coordinator.port})",
    )
    for worker in shard.cluster.workers:
        await asyncio.to_thread(
            shard.sql, 0, f"SELECT citus_add_node('{worker.host}', {worker.port})"
        )
    # As on the main Citus shard: any tenant statement of the app role that would run on
    # more than one shard fails.
    await asyncio.to_thread(
        shard.sql,
        0,
        f"ALTER ROLE {APP_ROLE} IN DATABASE {shard.database} "
        "SET citus.multi_task_query_log_level = 'error'",
    )


async def test_a_postgres_shard_with_rows_becomes_a_citus_shard_in_place(
    plain_shard: PlainShard,
) -> None:
    shard, client = plain_shard, plain_shard.client
    admin = await shard.admin.headers()
    tenant = await onboard(client, admin, shard_id=SHARD)
    other = await onboard(client, admin, shard_id=SHARD)
    accounts = []
    for n in range(12):
        resp = await client.post("/v1/accounts", json={"name": f"A{n}"}, headers=tenant.headers)
        assert resp.status_code == 201, resp.text
        accounts.append(resp.json()["id"])
    for n in range(5):
        resp = await client.post(
            "/v1/contacts",
            json={"first_name": "C", "last_name": f"{n}", "account_id": accounts[n]},
            headers=tenant.headers,
        )
        assert resp.status_code == 201, resp.text
    await client.post("/v1/accounts", json={"name": "Elsewhere"}, headers=other.headers)
    before = await _everything(client, tenant)

    # Not yet a Citus database, then no workers, then a role bound by forced RLS.
    await _refused(shard, "no citus extension")
    await _become_citus(shard)
    await _refused(shard, "none is registered")
    await _register_workers(shard)
    await _refused(shard, "forced row-level security")
    assert await _distributed_tables(shard) == 0

    admin_dsn = await shard_admin_dsn(shard.cluster, shard.database)
    done = await asyncio.to_thread(
        _cli, shard, "shards", "distribute", SHARD, "--admin-dsn", admin_dsn
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["engine"] == "citus"
    tables = {t["table"]: t for t in report["tables"]}
    assert report["tables"][0]["table"] == "tenant_residency"
    assert all(t["distributed_now"] for t in tables.values())
    assert all(t["rows_before"] == t["rows_after"] for t in tables.values())
    assert tables["account"]["rows_after"] == 13
    assert tables["contact"]["rows_after"] == 5
    assert await _distributed_tables(shard) == len(tables)
    colocation = await asyncio.to_thread(
        shard.sql, 0, "SELECT count(DISTINCT colocationid) FROM pg_dist_partition"
    )
    assert colocation == "1"
    listed = {
        s["id"]: s["engine"]
        for s in (await client.get("/admin/v1/shards", headers=admin)).json()["data"]
    }
    assert listed == {SHARD: "citus"}

    # A running instance takes the new engine with its next topology refresh.
    await shard.app.state.runtime.reload_topology()  # type: ignore[attr-defined]
    assert await _everything(client, tenant) == before
    got = await client.get(f"/v1/accounts/{accounts[0]}", headers=tenant.headers)
    assert got.status_code == 200, got.text
    assert (await client.get(f"/v1/accounts/{accounts[0]}", headers=other.headers)).status_code == (
        404
    )
    made = await client.post("/v1/accounts", json={"name": "After"}, headers=tenant.headers)
    assert made.status_code == 201, made.text
    rows = await asyncio.to_thread(
        shard.sql, 0, f"SELECT count(*) FROM account WHERE tenant_id = '{tenant.id}'"
    )
    assert rows == "13"

    # Again: every table is skipped, nothing changes.
    again = await distribute_shard(shard.settings, SHARD, admin_dsn=admin_dsn)
    assert again["engine"] == "citus"
    assert "distributed_now': True" not in str(again["tables"])
    after = await _everything(client, tenant)
    assert after["contacts"] == before["contacts"]
    assert [a["id"] for a in after["accounts"]] == sorted(  # type: ignore[index]
        [*(a["id"] for a in before["accounts"]), made.json()["id"]]  # type: ignore[index]
    )


async def test_an_unknown_shard_and_a_plain_database_are_refused(plain_shard: PlainShard) -> None:
    with pytest.raises(LookupError, match="no shard 'nowhere'"):
        await distribute_shard(plain_shard.settings, "nowhere")
    with pytest.raises(CitusAdminError, match="no citus extension"):
        await distribute_shard(plain_shard.settings, SHARD)
