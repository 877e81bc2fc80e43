"""What the tests of tenant moves share: an app on its own control plane with two shards
on throwaway servers, looking at the shards as their superuser, and writing through
the API while a move runs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx

from meridian.app import create_app
from meridian.operations import add_shard, create_admin_client, migrate_all
from meridian.runtime import Runtime
from meridian_dev.postgres import LocalCluster
from sharding.mover import MoveOptions, Mover, replication_name
from tests.fixtures.api import AdminToken, Tenant, onboard
from tests.fixtures.databases import APP_ROLE, dsn, raw_dsn, recreate_database
from tests.fixtures.users import new_user_id

if TYPE_CHECKING:  # a plain import would make pytest try to collect it as a test class
    from tests.fixtures.databases import TestDatabases

REPO = str(Path(__file__).resolve().parents[2])
LOGICAL = {"wal_level": "logical"}


@dataclass
class Env:
    client: httpx.AsyncClient
    runtime: Runtime
    admin: AdminToken
    # shard id -> (server, database); new tenants go on the first.
    servers: dict[str, tuple[LocalCluster, str]]

    def url(self, shard_id: str) -> str:
        server, database = self.servers[shard_id]
        return server.url(database)

    def mover(self, *, announce: bool = True, options: MoveOptions | None = None) -> Mover:
        """A fresh mover, as another process would make one."""
        invalidate = self.runtime.directory.invalidate if announce else None
        return Mover(self.runtime.control, invalidate=invalidate, options=options)

    async def tenant(self, shard_id: str | None = None) -> Tenant:
        headers = await self.admin.headers()
        home = shard_id or next(iter(self.servers))
        return await onboard(self.client, headers, shard_id=home, slug=f"mv-{run_id()}")


def run_id() -> str:
    return uuid.uuid4().hex[:10]


@asynccontextmanager
async def moving_env(
    databases: TestDatabases,
    servers: dict[str, tuple[LocalCluster, str]],
    regions: Mapping[str, str],
    control_db: str,
) -> AsyncIterator[Env]:
    """The app on a control plane of its own (``control_db`` on the main server) whose
    shards are ``servers`` (databases made if missing), each in its region."""
    await recreate_database(control_db)
    for server, database in servers.values():
        await asyncio.to_thread(server.ensure_database, database)
    settings = databases.settings(
        control_dsn=dsn(control_db, APP_ROLE), control_admin_dsn=dsn(control_db), shards=[]
    )
    await migrate_all(settings)
    for shard_id, (server, database) in servers.items():
        await add_shard(
            settings,
            shard_id=shard_id,
            region=regions[shard_id],
            dsn=server.dsn(database, APP_ROLE),
            admin_dsn=server.dsn(database),
        )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            admin = await create_admin_client(settings, "mover admin")
            yield Env(
                client,
                app.state.runtime,
                AdminToken(client, admin.client_id, admin.client_secret),
                servers,
            )
    conn = await asyncpg.connect(raw_dsn("postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{control_db}" WITH (FORCE)')
    finally:
        await conn.close()


# -- looking at the shards as their superuser (RLS does not apply) --------------------

TABLES = (
    "account",
    "contact",
    "activity",
    "app_user",
    "user_closure",
    "record_share",
    "idempotency_key",
    "pipeline",
    "pipeline_stage",
    "opportunity",
    "tenant_residency",
)


async def query(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def counts(env: Env, shard_id: str, tenant: Tenant) -> dict[str, int]:
    conn = await asyncpg.connect(env.url(shard_id))
    try:
        return {
            t: await conn.fetchval(
                f"SELECT count(*) FROM {t} WHERE tenant_id = $1",
                uuid.UUID(tenant.id),
            )
            for t in TABLES
        }
    finally:
        await conn.close()


async def residency(env: Env, shard_id: str, tenant: Tenant) -> tuple[int, bool] | None:
    rows = await query(
        env.url(shard_id),
        "SELECT epoch, writable FROM tenant_residency WHERE tenant_id = $1",
        uuid.UUID(tenant.id),
    )
    return (rows[0]["epoch"], rows[0]["writable"]) if rows else None


async def directory(env: Env, tenant: Tenant) -> tuple[str, int]:
    ctx = await env.runtime.directory.load(uuid.UUID(tenant.id))
    assert ctx is not None
    return ctx.shard_id, ctx.epoch


async def assert_one_writable(
    env: Env, tenant: Tenant, *, down: frozenset[str] = frozenset()
) -> None:
    """At most one shard accepts the tenant's writes, and it is the directory's shard
    at the directory's epoch (none while the move freezes writes). Shards in ``down``
    are not running: they accept nothing."""
    shard_id, epoch = await directory(env, tenant)
    writable = []
    for sid in env.servers:
        if sid in down:
            continue
        found = await residency(env, sid, tenant)
        if found is not None and found[1]:
            writable.append((sid, found[0]))
    assert len(writable) <= 1, writable
    if writable:
        assert writable == [(shard_id, epoch)], (writable, shard_id, epoch)


async def leftovers(
    env: Env, move_id: uuid.UUID, *, down: frozenset[str] = frozenset()
) -> list[str]:
    """Replication objects of the move still on the servers (but those in ``down``)."""
    name = replication_name(move_id)
    found: list[str] = []
    for sid in env.servers:
        if sid in down:
            continue
        for sql in (
            "SELECT 'publication' FROM pg_publication WHERE pubname = $1",
            "SELECT 'subscription' FROM pg_subscription WHERE subname = $1",
            "SELECT 'slot' FROM pg_replication_slots WHERE slot_name = $1",
        ):
            found += [f"{sid}:{r[0]}" for r in await query(env.url(sid), sql, name)]
    return found


# -- writing through the API ----------------------------------------------------------


async def seed(env: Env, tenant: Tenant, contacts: int) -> dict[str, dict[str, Any]]:
    """Accounts (one a parent of the others), users with a manager, contacts with
    encrypted email, a share, an activity and an idempotency key; returns the contacts."""
    c, h = env.client, tenant.headers
    parent = await c.post("/v1/accounts", json={"name": "Parent"}, headers=h)
    assert parent.status_code == 201, parent.text
    accounts = [parent.json()["id"]]
    for i in range(5):
        child = await c.post(
            "/v1/accounts", json={"name": f"Child {i}", "parent_id": accounts[0]}, headers=h
        )
        assert child.status_code == 201, child.text
        accounts.append(child.json()["id"])
    manager = await new_user_id(c, tenant, role="sales_manager")
    rep = await new_user_id(c, tenant, manager_id=manager)
    made: dict[str, dict[str, Any]] = {}
    for i in range(contacts):
        resp = await c.post(
            "/v1/contacts",
            json={
                "first_name": "Seed",
                "last_name": f"Contact {i}",
                "email": f"seed{i}@example.test",
                "account_id": accounts[i % len(accounts)],
                "owner_id": rep if i % 2 else manager,
            },
            headers={**h, "Idempotency-Key": f"seed-{tenant.slug}-{i}"} if i < 5 else h,
        )
        assert resp.status_code == 201, resp.text
        made[resp.json()["id"]] = resp.json()
    first = next(iter(made))
    share = await c.post(f"/v1/contacts/{first}/shares", json={"user_id": rep}, headers=h)
    assert share.status_code == 201, share.text
    note = await c.post(
        "/v1/activities",
        json={
            "type": "call",
            "subject": "Met",
            "occurred_at": "2026-03-01T09:00:00+00:00",
            "contact_id": first,
        },
        headers=h,
    )
    assert note.status_code == 201, note.text
    return made


@dataclass
class Writer:
    """Creates and updates contacts until stopped; remembers every acknowledged write
    (the contact as the API answered it)."""

    client: httpx.AsyncClient
    tenant: Tenant
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)
    acks: int = 0  # acknowledged writes, updates of one contact included
    refused: int = 0
    unexpected: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            h = self.tenant.headers
            if n % 3 == 0 and self.acked:
                cid = list(self.acked)[n % len(self.acked)]
                resp = await self.client.patch(
                    f"/v1/contacts/{cid}", json={"title": f"Title {n}"}, headers=h
                )
                ok = 200
            else:
                resp = await self.client.post(
                    "/v1/contacts",
                    json={"last_name": f"Written {n}", "email": f"w{n}@example.test"},
                    headers=h,
                )
                ok = 201
            if resp.status_code == ok:
                self.acked[resp.json()["id"]] = resp.json()
                self.acks += 1
            elif resp.status_code == 503:
                self.refused += 1  # fenced for the move: not acknowledged, retried later
                await asyncio.sleep(0.01)
            else:
                self.unexpected.append(f"{resp.status_code} {resp.text}")
            await asyncio.sleep(0)


async def assert_served_as_written(
    env: Env, tenant: Tenant, contacts: dict[str, dict[str, Any]]
) -> None:
    for cid, written in contacts.items():
        resp = await env.client.get(f"/v1/contacts/{cid}", headers=tenant.headers)
        assert resp.status_code == 200, resp.text
        read = resp.json()
        for key in ("last_name", "email", "title", "version", "updated_at"):
            assert read[key] == written[key], (cid, key, read[key], written[key])
