"""A tenant of a Citus shard gets a shard group of its own and that group moves to
another worker (``POST /admin/v1/tenants/{id}/isolate``, ``meridian tenants isolate``)
while the tenant keeps reading and writing through the API; every other tenant's rows
stay where they were; what cannot be done safely is refused before anything changes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

from meridian.admin.service import tenant_admin
from meridian.admin.wiring import admin_deps
from sharding import citus
from sharding.models import Shard
from tests.citus.conftest import CITUS_SHARD, CitusApi
from tests.citus.shard_admin import shard_admin_dsn
from tests.fixtures.api import Tenant, onboard
from tests.fixtures.dev_platform import MERIDIAN, clean_env
from tests.fixtures.response_models import checking

pytestmark = pytest.mark.slow

TENANT_TABLES = ("tenant_residency", "account", "pipeline", "pipeline_stage")


@pytest.fixture
async def recorded_shard_admin(citus_api: CitusApi) -> AsyncIterator[str]:
    """The Citus shard's recorded admin DSN names the shard admin role for the test
    (the API's isolation runs as the recorded one), and the owner's again after it."""
    dsn = await shard_admin_dsn(citus_api.cluster)
    owner = citus_api.cluster.dsn(citus_api.cluster.owner)
    await _record_admin_dsn(citus_api, dsn)
    try:
        yield dsn
    finally:
        await _record_admin_dsn(citus_api, owner)


async def _record_admin_dsn(api: CitusApi, dsn: str) -> None:
    engine = create_async_engine(api.settings.control_migrate_dsn)
    try:
        async with engine.begin() as conn:
            await conn.execute(update(Shard).where(Shard.id == CITUS_SHARD).values(admin_dsn=dsn))
    finally:
        await engine.dispose()


async def _superuser(api: CitusApi) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(api.cluster.url())
    return conn


async def _group(api: CitusApi, tenant: Tenant) -> citus.GroupPlacement:
    conn = await _superuser(api)
    try:
        return await citus.tenant_group(conn, uuid.UUID(tenant.id))
    finally:
        await conn.close()


async def _rows_of_others(api: CitusApi, tenant: Tenant) -> dict[str, int]:
    """Rows of every other tenant of the shard, per table (as the superuser: all)."""
    conn = await _superuser(api)
    try:
        return {
            t: await conn.fetchval(
                f"SELECT count(*) FROM {t} WHERE tenant_id <> $1",
                uuid.UUID(tenant.id),
            )
            for t in TENANT_TABLES
        }
    finally:
        await conn.close()


async def _unforced_placements(api: CitusApi) -> list[str]:
    conn = await _superuser(api)
    try:
        rows = await conn.fetch(
            "SELECT p.logicalrelid::text AS tbl, r.shardid, r.result"
            " FROM pg_dist_partition p, run_command_on_placements(p.logicalrelid,"
            " $$SELECT relforcerowsecurity FROM pg_class WHERE oid = '%s'::regclass$$) r"
        )
    finally:
        await conn.close()
    assert rows
    return [f"{r['tbl']}:{r['shardid']}" for r in rows if r["result"] != "t"]


def _other_worker(api: CitusApi, node: str) -> str:
    return next(w for w in (f"{n.host}:{n.port}" for n in api.cluster.workers) if w != node)


@dataclass
class Traffic:
    """A client of the tenant that keeps creating, reading and listing accounts until
    stopped; every answer is kept with how long it took."""

    client: httpx.AsyncClient
    tenant: Tenant
    created: list[str] = field(default_factory=list)
    answers: list[tuple[str, int, float]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _timed(self, what: str, request: asyncio.Future[httpx.Response]) -> httpx.Response:
        started = time.perf_counter()
        resp = await request
        self.answers.append((what, resp.status_code, time.perf_counter() - started))
        return resp

    async def run(self) -> None:
        h = self.tenant.headers
        n = 0
        while not self.stop.is_set():
            n += 1
            made = await self._timed(
                "create",
                asyncio.ensure_future(
                    self.client.post("/v1/accounts", json={"name": f"During {n}"}, headers=h)
                ),
            )
            if made.status_code == 201:
                self.created.append(made.json()["id"])
                await self._timed(
                    "read",
                    asyncio.ensure_future(
                        self.client.get(f"/v1/accounts/{self.created[-1]}", headers=h)
                    ),
                )
            await self._timed(
                "list",
                asyncio.ensure_future(
                    self.client.get("/v1/accounts", params={"limit": 5}, headers=h)
                ),
            )

    def failures(self) -> list[tuple[str, int, float]]:
        return [a for a in self.answers if a[1] >= 400]

    def slowest(self) -> float:
        return max(a[2] for a in self.answers)


async def _account_ids(client: httpx.AsyncClient, tenant: Tenant) -> set[str]:
    ids: set[str] = set()
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        resp = await client.get("/v1/accounts", params=params, headers=tenant.headers)
        assert resp.status_code == 200, resp.text
        ids |= {r["id"] for r in resp.json()["data"]}
        cursor = resp.json()["next_cursor"]
        if cursor is None:
            return ids


async def test_a_tenant_gets_its_own_group_on_another_worker_while_it_keeps_answering(
    citus_api: CitusApi, recorded_shard_admin: str
) -> None:
    client = citus_api.client
    tenant, neighbour = await citus_api.onboard(), await citus_api.onboard()
    for who in (tenant, neighbour):
        for n in range(10):
            resp = await client.post("/v1/accounts", json={"name": f"A{n}"}, headers=who.headers)
            assert resp.status_code == 201, resp.text
    others = await _rows_of_others(citus_api, tenant)
    before = await _group(citus_api, tenant)
    target = _other_worker(citus_api, before.node)

    traffic = Traffic(client, tenant)
    running = asyncio.create_task(traffic.run())
    await asyncio.sleep(0.5)  # traffic flows before Citus starts
    admin = await citus_api.admin.headers()
    started = time.perf_counter()
    # Every answer, the isolation's and the traffic's, checked against its declared model
    # and the OpenAPI document (the response-model suite leaves this operation to here).
    with checking(client) as checker:
        resp = await client.post(
            f"/admin/v1/tenants/{tenant.id}/isolate", json={"node": target}, headers=admin
        )
    took = time.perf_counter() - started
    assert checker.violations == []
    assert ("POST", "/admin/v1/tenants/{tenant_id}/isolate") in checker.exercised
    await asyncio.sleep(0.5)  # and after it ends
    traffic.stop.set()
    await running

    assert resp.status_code == 200, resp.text
    done = resp.json()
    assert done["tenant_id"] == tenant.id
    assert done["shard_id"] == CITUS_SHARD
    assert done["before"] == {"shard": before.shard, "node": before.node, "alone": False}
    assert done["after"]["node"] == target
    assert done["after"]["alone"] is True
    assert done["after"]["shard"] != before.shard
    assert done["isolated_now"] is True
    assert done["moved_now"] is True
    assert await _group(citus_api, tenant) == citus.GroupPlacement(
        done["after"]["shard"], target, True
    )
    # The tenant kept answering: no request failed, and each answered in bounded time.
    assert traffic.failures() == []
    assert len(traffic.created) > 5
    print(  # the figures, for the record (pytest -s)
        f"\nisolation {done['isolate_seconds']}s, group move {done['move_seconds']}s, "
        f"request {took:.2f}s; tenant requests during it: {len(traffic.answers)}, "
        f"slowest {traffic.slowest():.3f}s"
    )
    # Every row is there: the tenant's (before and during), and every other tenant's.
    assert set(traffic.created) <= await _account_ids(client, tenant)
    assert len(await _account_ids(client, tenant)) == 10 + len(traffic.created)
    assert await _rows_of_others(citus_api, tenant) == others
    assert len(await _account_ids(client, neighbour)) == 10
    # Row-level security is FORCEd again on every table and every shard, new ones too.
    assert await _unforced_placements(citus_api) == []

    # Again: nothing left to do.
    again = await client.post(
        f"/admin/v1/tenants/{tenant.id}/isolate", json={"node": target}, headers=admin
    )
    assert again.status_code == 200, again.text
    assert again.json()["before"] == again.json()["after"] == done["after"]
    assert again.json()["isolated_now"] is False
    assert again.json()["moved_now"] is False


async def test_with_writes_blocked_the_tenant_waits_but_nothing_fails(
    citus_api: CitusApi,
) -> None:
    """``--block-writes`` (nodes without logical decoding): the group's writes wait for
    the copy instead of replicating; no request fails, and the wait is measured."""
    client = citus_api.client
    tenant = await citus_api.onboard()
    for n in range(10):
        resp = await client.post("/v1/accounts", json={"name": f"A{n}"}, headers=tenant.headers)
        assert resp.status_code == 201, resp.text
    others = await _rows_of_others(citus_api, tenant)
    before = await _group(citus_api, tenant)
    target = _other_worker(citus_api, before.node)
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    admin_dsn = await shard_admin_dsn(citus_api.cluster)

    traffic = Traffic(client, tenant)
    running = asyncio.create_task(traffic.run())
    await asyncio.sleep(0.5)
    done = await tenant_admin.isolate(
        admin_deps(runtime),
        uuid.UUID(tenant.id),
        node=target,
        admin_dsn=admin_dsn,
        mode=citus.TransferMode.BLOCK_WRITES,
    )
    await asyncio.sleep(0.5)
    traffic.stop.set()
    await running

    assert done["after"]["node"] == target
    assert done["after"]["alone"] is True
    assert traffic.failures() == []
    slowest_write = max(a[2] for a in traffic.answers if a[0] == "create")
    print(  # the figures, for the record (pytest -s)
        f"\nblock_writes: isolation {done['isolate_seconds']}s, group move "
        f"{done['move_seconds']}s; tenant requests during it: {len(traffic.answers)}, "
        f"slowest write {slowest_write:.3f}s, slowest request {traffic.slowest():.3f}s"
    )
    assert len(await _account_ids(client, tenant)) == 10 + len(traffic.created)
    assert await _rows_of_others(citus_api, tenant) == others
    assert await _unforced_placements(citus_api) == []


async def test_isolation_as_an_owner_bound_by_forced_rls_is_refused(citus_api: CitusApi) -> None:
    client = citus_api.client
    admin = await citus_api.admin.headers()
    tenant = await citus_api.onboard()
    before = await _group(citus_api, tenant)
    # The recorded admin DSN is the owner's: Citus would copy none of the rows.
    refused = await client.post(f"/admin/v1/tenants/{tenant.id}/isolate", headers=admin)
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "row-level security" in refused.json()["detail"]
    assert await _group(citus_api, tenant) == before


async def test_isolation_refuses_nodes_that_are_not_workers_and_other_engines(
    citus_api: CitusApi, recorded_shard_admin: str
) -> None:
    client = citus_api.client
    admin = await citus_api.admin.headers()
    tenant = await citus_api.onboard()
    plain = await onboard(client, admin, shard_id="us-1")
    before = await _group(citus_api, tenant)
    path = f"/admin/v1/tenants/{tenant.id}/isolate"
    coordinator = f"{citus_api.cluster.coordinator.host}:{citus_api.cluster.coordinator.port}"
    # Each refusal is a problem the operation declares (OpenAPI and models checked).
    with checking(client) as checker:
        for node, says in (
            ("127.0.0.1:1", "no active worker 127.0.0.1:1"),
            (coordinator, "does not hold tenant shards"),
            ("no port", "string_pattern"),
        ):
            bad = await client.post(path, json={"node": node}, headers=admin)
            assert bad.status_code == 422, bad.text
            assert says in str(bad.json())

        # Another isolation holds the shard's isolation lock.
        held = await _superuser(citus_api)
        try:
            await held.execute("SELECT pg_advisory_lock($1)", 0x4D49534F)
            busy = await client.post(path, headers=admin)
        finally:
            await held.close()
        assert busy.status_code == 409, busy.text
        assert "another isolation" in busy.json()["detail"]

        # A tenant of a PostgreSQL shard; a tenant that does not exist.
        on_postgres = await client.post(f"/admin/v1/tenants/{plain.id}/isolate", headers=admin)
        assert on_postgres.status_code == 409, on_postgres.text
        assert "runs postgres" in on_postgres.json()["detail"]
        missing = await client.post(f"/admin/v1/tenants/{uuid.uuid4()}/isolate", headers=admin)
        assert missing.status_code == 404
    assert checker.violations == []
    assert await _group(citus_api, tenant) == before


def _cli(api: CitusApi, *args: str) -> tuple[int, str, str]:
    settings = api.settings
    env = clean_env(
        MERIDIAN_CONTROL_DSN=settings.control_dsn,
        MERIDIAN_CONTROL_ADMIN_DSN=settings.control_migrate_dsn,
        MERIDIAN_KEK=settings.kek.get_secret_value() if settings.kek else "",
    )
    done = subprocess.run(
        [str(MERIDIAN), *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    return done.returncode, done.stdout, done.stderr


async def test_the_command_isolates_by_slug_and_says_what_it_refuses(citus_api: CitusApi) -> None:
    tenant = await citus_api.onboard()
    before = await _group(citus_api, tenant)
    target = _other_worker(citus_api, before.node)

    code, out, err = await asyncio.to_thread(
        _cli, citus_api, "tenants", "isolate", tenant.slug, "--to-node", target
    )
    assert code == 1
    assert err.startswith("meridian tenants isolate: ")
    assert "row-level security" in err
    assert len(err.strip().splitlines()) == 1

    admin_dsn = await shard_admin_dsn(citus_api.cluster)
    code, out, err = await asyncio.to_thread(
        _cli,
        citus_api,
        "tenants",
        "isolate",
        tenant.slug,
        "--to-node",
        target,
        "--admin-dsn",
        admin_dsn,
    )
    assert code == 0, err
    done = json.loads(out.strip().splitlines()[-1])
    assert done["after"] == {"shard": done["after"]["shard"], "node": target, "alone": True}
    assert done["isolated_now"] is True

    code, out, err = await asyncio.to_thread(
        _cli,
        citus_api,
        *("tenants", "isolate", tenant.slug, "--to-node", "127.0.0.1:1"),
        *("--admin-dsn", admin_dsn),
    )
    assert code == 1
    assert "no active worker 127.0.0.1:1" in err
