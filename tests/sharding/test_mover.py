"""Online tenant moves between two PostgreSQL servers (``sharding.mover``).

Two throwaway servers with ``wal_level = logical`` hold shards mv-a and mv-b; the app
has its own control plane on the main server. Tenants are onboarded on mv-a through the
API and moved to mv-b while a writer keeps creating and updating contacts.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from meridian.app import create_app
from meridian.operations import add_shard, create_admin_client, migrate_all
from meridian.runtime import Runtime
from meridian_dev.postgres import LocalCluster
from sharding.errors import ResidencyError, UnknownShardError
from sharding.models import MoveState
from sharding.mover import (
    MoveConflictError,
    Mover,
    MoveRefusedError,
    replication_name,
)
from tenancy.context import TenantContext, TenantStatus
from tests.fixtures.api import AdminToken, Tenant, onboard
from tests.fixtures.databases import APP_ROLE, dsn, raw_dsn, recreate_database
from tests.fixtures.pgcluster import StartCluster, pg_clusters
from tests.fixtures.users import new_user_id

if TYPE_CHECKING:  # a plain import would make pytest try to collect it as a test class
    from tests.fixtures.databases import TestDatabases

__all__ = ["pg_clusters"]  # a fixture: imported to register it here

pytestmark = pytest.mark.slow

A, B = "mv-a", "mv-b"
# A move between them is also a change of the tenant's region.
REGIONS = {A: "mv-us", B: "mv-eu"}
REPO = str(Path(__file__).resolve().parents[2])
LOGICAL = {"wal_level": "logical"}


@dataclass
class Env:
    client: httpx.AsyncClient
    runtime: Runtime
    admin: AdminToken
    servers: dict[str, tuple[LocalCluster, str]]  # shard id -> (server, database)

    def url(self, shard_id: str) -> str:
        server, database = self.servers[shard_id]
        return server.url(database)

    def mover(self, *, announce: bool = True) -> Mover:
        """A fresh mover, as another process would make one."""
        invalidate = self.runtime.directory.invalidate if announce else None
        return Mover(self.runtime.control, invalidate=invalidate)

    async def tenant(self, shard_id: str = A) -> Tenant:
        headers = await self.admin.headers()
        return await onboard(self.client, headers, shard_id=shard_id, slug=f"mv-{_run()}")


def _run() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
async def env(databases: TestDatabases, pg_clusters: StartCluster) -> AsyncIterator[Env]:
    server_a, server_b = await asyncio.gather(
        asyncio.to_thread(pg_clusters, LOGICAL), asyncio.to_thread(pg_clusters, LOGICAL)
    )
    control_db = f"{databases.prefix}_mv_control"
    await recreate_database(control_db)
    servers = {A: (server_a, "mv_a"), B: (server_b, "mv_b")}
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
            region=REGIONS[shard_id],
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


async def _query(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _counts(env: Env, shard_id: str, tenant: Tenant) -> dict[str, int]:
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


async def _residency(env: Env, shard_id: str, tenant: Tenant) -> tuple[int, bool] | None:
    rows = await _query(
        env.url(shard_id),
        "SELECT epoch, writable FROM tenant_residency WHERE tenant_id = $1",
        uuid.UUID(tenant.id),
    )
    return (rows[0]["epoch"], rows[0]["writable"]) if rows else None


async def _directory(env: Env, tenant: Tenant) -> tuple[str, int]:
    ctx = await env.runtime.directory.load(uuid.UUID(tenant.id))
    assert ctx is not None
    return ctx.shard_id, ctx.epoch


async def _assert_one_writable(env: Env, tenant: Tenant) -> None:
    """At most one shard accepts the tenant's writes, and it is the directory's shard
    at the directory's epoch (none while the move freezes writes)."""
    shard_id, epoch = await _directory(env, tenant)
    writable = []
    for sid in (A, B):
        found = await _residency(env, sid, tenant)
        if found is not None and found[1]:
            writable.append((sid, found[0]))
    assert len(writable) <= 1, writable
    if writable:
        assert writable == [(shard_id, epoch)], (writable, shard_id, epoch)


async def _leftovers(env: Env, move_id: uuid.UUID) -> list[str]:
    """Replication objects of the move still on either server."""
    name = replication_name(move_id)
    found: list[str] = []
    for sid in (A, B):
        for sql in (
            "SELECT 'publication' FROM pg_publication WHERE pubname = $1",
            "SELECT 'subscription' FROM pg_subscription WHERE subname = $1",
            "SELECT 'slot' FROM pg_replication_slots WHERE slot_name = $1",
        ):
            found += [f"{sid}:{r[0]}" for r in await _query(env.url(sid), sql, name)]
    return found


# -- writing through the API ----------------------------------------------------------


async def _seed(env: Env, tenant: Tenant, contacts: int) -> dict[str, dict[str, Any]]:
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
            elif resp.status_code == 503:
                self.refused += 1  # fenced for the move: not acknowledged, retried later
                await asyncio.sleep(0.01)
            else:
                self.unexpected.append(f"{resp.status_code} {resp.text}")
            await asyncio.sleep(0)


async def _assert_served_as_written(
    env: Env, tenant: Tenant, contacts: dict[str, dict[str, Any]]
) -> None:
    for cid, written in contacts.items():
        resp = await env.client.get(f"/v1/contacts/{cid}", headers=tenant.headers)
        assert resp.status_code == 200, resp.text
        read = resp.json()
        for key in ("last_name", "email", "title", "version", "updated_at"):
            assert read[key] == written[key], (cid, key, read[key], written[key])


# -- the tests ------------------------------------------------------------------------


async def test_a_tenant_moves_to_another_server_while_it_is_written(env: Env) -> None:
    tenant, neighbour = await env.tenant(), await env.tenant()
    seeded = await _seed(env, tenant, contacts=120)
    neighbour_seeded = await _seed(env, neighbour, contacts=10)
    neighbour_before = await _counts(env, A, neighbour)
    assert await _directory(env, tenant) == (A, 1)

    writer = Writer(env.client, tenant)
    writing = asyncio.create_task(writer.run())
    await asyncio.sleep(0.3)  # some writes before the move starts
    try:
        started = time.monotonic()
        mover = env.mover()
        planned = await mover.plan_move(uuid.UUID(tenant.id), B)
        assert planned.state is MoveState.PLANNED
        assert (planned.source_shard_id, planned.target_shard_id, planned.epoch) == (A, B, 1)
        moved = await mover.run_move(planned.id)
        took = time.monotonic() - started
        await asyncio.sleep(0.3)  # and some after it, on the new shard
    finally:
        writer.stop.set()
        await writing

    assert moved.state is MoveState.DONE, moved.error
    assert moved.error is None
    assert moved.freeze_ms is not None
    assert moved.freeze_ms < 5000
    assert writer.unexpected == []
    assert len(writer.acked) > 10
    rows = sum(v["rows"] for v in moved.progress["verified"].values())
    print(  # the figures, for the record (pytest -s)
        f"\nmove of {rows}"
        f" rows: {took:.2f}s, freeze {moved.freeze_ms} ms (fence "
        f"{moved.progress['fence_ms']} ms, catch-up {moved.progress['fenced_catch_up_ms']} ms, "
        f"verify {moved.progress['verify_ms']} ms), writes acknowledged {len(writer.acked)}, "
        f"refused {writer.refused}"
    )

    # The directory, the tenant's region, the residency rows, the shards' contents.
    assert await _directory(env, tenant) == (B, 2)
    ctx = await env.runtime.directory.load(uuid.UUID(tenant.id))
    assert ctx is not None
    assert ctx.region == REGIONS[B]
    neighbour_ctx = await env.runtime.directory.load(uuid.UUID(neighbour.id))
    assert neighbour_ctx is not None
    assert neighbour_ctx.region == REGIONS[A]
    assert await _residency(env, B, tenant) == (2, True)
    assert await _residency(env, A, tenant) is None
    assert set((await _counts(env, A, tenant)).values()) == {0}
    on_b = await _counts(env, B, tenant)
    assert on_b["contact"] == len(seeded | writer.acked)
    for table in ("account", "app_user", "user_closure", "record_share", "activity"):
        assert on_b[table] > 0, table
    assert on_b["idempotency_key"] >= 5
    # Rows copied / total per table, as the copy reported them.
    copied = moved.progress["tables"]
    assert set(copied) == set(TABLES) - {"tenant_residency"}
    assert copied["contact"]["copied"] >= len(seeded)
    assert {t for t, v in moved.progress["verified"].items() if v["rows"]} >= {"contact"}
    assert await _leftovers(env, moved.id) == []

    # Every acknowledged write reads back identical from B, encrypted email included.
    await _assert_served_as_written(env, tenant, seeded | writer.acked)
    by_email = await env.client.get(
        "/v1/contacts", params={"email": "seed7@example.test"}, headers=tenant.headers
    )
    assert by_email.status_code == 200, by_email.text
    assert [c["email"] for c in by_email.json()["data"]] == ["seed7@example.test"]
    users = await env.client.get("/v1/users", headers=tenant.headers)
    assert users.status_code == 200, users.text
    assert len(users.json()["data"]) == 2

    # The neighbour on A saw nothing of it.
    assert await _counts(env, A, neighbour) == neighbour_before
    await _assert_served_as_written(env, neighbour, neighbour_seeded)

    # An instance still holding the old entry is refused by the old shard, then
    # re-routed to the new one.
    stale = TenantContext(uuid.UUID(tenant.id), tenant.slug, A, REGIONS[A], TenantStatus.ACTIVE, 1)
    router = env.runtime.router
    with pytest.raises(ResidencyError) as refused:
        async with router.transaction(stale, write=True):
            pass
    assert refused.value.stale
    async with router.transaction(
        stale, write=True, on_stale=env.runtime.refresh_tenant
    ) as session:
        port = (await session.execute(text("SELECT inet_server_port()"))).scalar()
    assert port == env.servers[B][0].port
    # And through the API, with the directory entry cached before the move.
    await env.runtime.directory.invalidate(uuid.UUID(tenant.id))
    late = await env.client.post(
        "/v1/contacts", json={"last_name": "After"}, headers=tenant.headers
    )
    assert late.status_code == 201, late.text
    assert (await _counts(env, B, tenant))["contact"] == on_b["contact"] + 1


async def test_the_mover_killed_after_each_state_is_resumed_by_another(env: Env) -> None:
    tenant = await env.tenant()
    seeded = await _seed(env, tenant, contacts=20)
    move = await env.mover().plan_move(uuid.UUID(tenant.id), B)
    states: list[MoveState] = [move.state]
    acked: dict[str, dict[str, Any]] = {}
    while not move.finished:
        # A new mover each time: the previous one "died" after its step.
        move = await env.mover(announce=False).run_move(move.id, max_steps=1)
        states.append(move.state)
        await _assert_one_writable(env, tenant)
        resp = await env.client.post(
            "/v1/contacts", json={"last_name": f"During {move.state}"}, headers=tenant.headers
        )
        if move.state in (MoveState.VERIFYING, MoveState.FREEZING):
            # Between verifying and freezing the source is fenced (no shard accepts
            # writes); otherwise a write lands on whichever shard serves the tenant.
            assert resp.status_code in (201, 503), resp.text
        else:
            assert resp.status_code == 201, resp.text
        if resp.status_code == 201:
            acked[resp.json()["id"]] = resp.json()
    assert states == [
        MoveState.PLANNED,
        MoveState.COPYING,
        MoveState.CATCHING_UP,
        MoveState.VERIFYING,
        MoveState.FREEZING,
        MoveState.SWITCHED,
        MoveState.CLEANING,
        MoveState.DONE,
    ]
    assert await _directory(env, tenant) == (B, 2)
    assert set((await _counts(env, A, tenant)).values()) == {0}
    await _assert_served_as_written(env, tenant, seeded | acked)
    assert await _leftovers(env, move.id) == []


async def test_a_difference_found_by_verification_rolls_the_move_back(env: Env) -> None:
    tenant = await env.tenant()
    seeded = await _seed(env, tenant, contacts=15)
    before = await _counts(env, A, tenant)
    move = await env.mover().plan_move(uuid.UUID(tenant.id), B)
    while move.state is not MoveState.VERIFYING:
        move = await env.mover().run_move(move.id, max_steps=1)
    # A row on the target that is not what the source has (replication cannot undo it:
    # the source row does not change again).
    victim = next(iter(seeded))
    await _query(
        env.url(B), "UPDATE contact SET title = 'tampered' WHERE id = $1", uuid.UUID(victim)
    )

    failed = await env.mover().run_move(move.id)
    assert failed.state is MoveState.FAILED
    assert failed.error is not None
    assert "contact" in failed.error
    verified = failed.progress["verified"]["contact"]
    assert verified["source_hash"] != verified["target_hash"]
    # The source serves as before, writable at its epoch; the target keeps nothing.
    assert await _directory(env, tenant) == (A, 1)
    assert await _residency(env, A, tenant) == (1, True)
    assert set((await _counts(env, B, tenant)).values()) == {0}
    assert await _counts(env, A, tenant) == before
    assert await _leftovers(env, move.id) == []
    resp = await env.client.post(
        "/v1/contacts", json={"last_name": "Still here"}, headers=tenant.headers
    )
    assert resp.status_code == 201, resp.text
    await _assert_served_as_written(env, tenant, seeded)
    # A failed move does not block the next one.
    again = await env.mover().plan_move(uuid.UUID(tenant.id), B)
    assert (await env.mover().cancel_move(again.id)).state is MoveState.CANCELLED


async def test_moves_that_cannot_run_are_refused(env: Env) -> None:
    tenant = await env.tenant()
    mover = env.mover()
    tid = uuid.UUID(tenant.id)
    with pytest.raises(MoveConflictError, match="already"):
        await mover.plan_move(tid, A)  # its own shard
    with pytest.raises(UnknownShardError):
        await mover.plan_move(tid, "nowhere-1")

    first = await mover.plan_move(tid, B)
    first = await mover.run_move(first.id, max_steps=2)  # copying, under way
    assert first.state is MoveState.CATCHING_UP
    with pytest.raises(MoveConflictError, match="not finished"):
        await env.mover().plan_move(tid, B)
    assert [m.id for m in await mover.list_moves(tenant_id=tid)] == [first.id]

    cancelled = await env.mover().cancel_move(first.id)
    assert cancelled.state is MoveState.CANCELLED
    assert await _residency(env, A, tenant) == (1, True)
    assert set((await _counts(env, B, tenant)).values()) == {0}
    assert await _leftovers(env, first.id) == []
    listed = await mover.list_moves(tenant_id=tid, state=MoveState.CANCELLED)
    assert [m.id for m in listed] == [first.id]


async def test_a_source_without_logical_wal_is_refused(env: Env, databases: TestDatabases) -> None:
    # A shard on the main test server, which runs with wal_level = replica.
    database = f"{databases.prefix}_mv_replica"
    await recreate_database(database)
    await add_shard(
        env.runtime.settings,
        shard_id="mv-r",
        region="mv-r",
        dsn=dsn(database, APP_ROLE),
        admin_dsn=dsn(database),
    )
    await env.runtime.reload_topology()
    tenant = await env.tenant("mv-r")
    with pytest.raises(MoveRefusedError, match="wal_level"):
        await env.mover().plan_move(uuid.UUID(tenant.id), B)
    assert await env.mover().list_moves(tenant_id=uuid.UUID(tenant.id)) == []


async def test_a_move_cancelled_while_writes_are_frozen_unfences_the_source(env: Env) -> None:
    tenant = await env.tenant()
    seeded = await _seed(env, tenant, contacts=5)
    move = await env.mover().plan_move(uuid.UUID(tenant.id), B)
    while move.state is not MoveState.FREEZING:
        move = await env.mover().run_move(move.id, max_steps=1)
    # Fenced and verified: no shard takes the tenant's writes until the switch.
    assert await _residency(env, A, tenant) == (1, False)
    frozen = await env.client.post("/v1/contacts", json={"last_name": "X"}, headers=tenant.headers)
    assert frozen.status_code == 503

    cancelled = await env.mover().cancel_move(move.id)
    assert cancelled.state is MoveState.CANCELLED
    assert await _residency(env, A, tenant) == (1, True)
    assert await _directory(env, tenant) == (A, 1)
    assert set((await _counts(env, B, tenant)).values()) == {0}
    assert await _leftovers(env, move.id) == []
    resp = await env.client.post("/v1/contacts", json={"last_name": "Y"}, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    await _assert_served_as_written(env, tenant, seeded)
    with pytest.raises(MoveConflictError, match="cancelled already"):
        await env.mover().cancel_move(move.id)


# A mover in a process of its own, killed with SIGKILL mid-step.
_DRIVER = """
import asyncio, sys, uuid
from sqlalchemy.ext.asyncio import create_async_engine
from sharding.mover import Mover

async def main() -> None:
    engine = create_async_engine(sys.argv[1])
    await Mover(engine).run_move(uuid.UUID(sys.argv[2]))

asyncio.run(main())
"""


async def test_a_mover_killed_mid_step_is_resumed(env: Env) -> None:
    tenant = await env.tenant()
    seeded = await _seed(env, tenant, contacts=30)
    move = await env.mover().plan_move(uuid.UUID(tenant.id), B)
    for kill_in in (MoveState.COPYING, MoveState.CATCHING_UP):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _DRIVER,
            env.runtime.settings.control_dsn,
            str(move.id),
            cwd=REPO,
        )
        try:
            deadline = time.monotonic() + 30
            while (move := await env.mover().get_move(move.id)).state is not kill_in:
                assert not move.finished, move
                assert time.monotonic() < deadline, move
                await asyncio.sleep(0.005)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        await _assert_one_writable(env, tenant)
    move = await env.mover().run_move(move.id)
    assert move.state is MoveState.DONE, move.error
    assert await _directory(env, tenant) == (B, 2)
    assert set((await _counts(env, A, tenant)).values()) == {0}
    await _assert_served_as_written(env, tenant, seeded)
    assert await _leftovers(env, move.id) == []
