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
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import text

from meridian.operations import add_shard
from sharding.errors import ResidencyError, UnknownShardError
from sharding.models import MOVE_PATH, MoveState
from sharding.mover import MoveConflictError, MoveRefusedError
from tenancy.context import TenantContext, TenantStatus
from tests.fixtures.databases import APP_ROLE, dsn, recreate_database
from tests.fixtures.moving import (
    LOGICAL,
    REPO,
    TABLES,
    Env,
    Writer,
    assert_one_writable,
    assert_served_as_written,
    counts,
    directory,
    leftovers,
    moving_env,
    query,
    residency,
    seed,
)
from tests.fixtures.pgcluster import StartCluster

if TYPE_CHECKING:  # a plain import would make pytest try to collect it as a test class
    from tests.fixtures.databases import TestDatabases


pytestmark = pytest.mark.slow

A, B = "mv-a", "mv-b"
# A move between them is also a change of the tenant's region.
REGIONS = {A: "mv-us", B: "mv-eu"}


@pytest.fixture(scope="module")
async def env(databases: TestDatabases, pg_clusters: StartCluster) -> AsyncIterator[Env]:
    server_a, server_b = await asyncio.gather(
        asyncio.to_thread(pg_clusters, LOGICAL), asyncio.to_thread(pg_clusters, LOGICAL)
    )
    servers = {A: (server_a, "mv_a"), B: (server_b, "mv_b")}
    async with moving_env(databases, servers, REGIONS, f"{databases.prefix}_mv_control") as env:
        yield env


# -- the tests ------------------------------------------------------------------------


async def test_a_tenant_moves_to_another_server_while_it_is_written(env: Env) -> None:
    tenant, neighbour = await env.tenant(), await env.tenant()
    seeded = await seed(env, tenant, contacts=120)
    neighbour_seeded = await seed(env, neighbour, contacts=10)
    neighbour_before = await counts(env, A, neighbour)
    assert await directory(env, tenant) == (A, 1)

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
    assert await directory(env, tenant) == (B, 2)
    ctx = await env.runtime.directory.load(uuid.UUID(tenant.id))
    assert ctx is not None
    assert ctx.region == REGIONS[B]
    neighbour_ctx = await env.runtime.directory.load(uuid.UUID(neighbour.id))
    assert neighbour_ctx is not None
    assert neighbour_ctx.region == REGIONS[A]
    assert await residency(env, B, tenant) == (2, True)
    assert await residency(env, A, tenant) is None
    assert set((await counts(env, A, tenant)).values()) == {0}
    on_b = await counts(env, B, tenant)
    assert on_b["contact"] == len(seeded | writer.acked)
    for table in ("account", "app_user", "user_closure", "record_share", "activity"):
        assert on_b[table] > 0, table
    assert on_b["idempotency_key"] >= 5
    # Rows copied / total per table, as the copy reported them.
    copied = moved.progress["tables"]
    assert set(copied) == set(TABLES) - {"tenant_residency"}
    assert copied["contact"]["copied"] >= len(seeded)
    assert {t for t, v in moved.progress["verified"].items() if v["rows"]} >= {"contact"}
    assert await leftovers(env, moved.id) == []

    # Every acknowledged write reads back identical from B, encrypted email included.
    await assert_served_as_written(env, tenant, seeded | writer.acked)
    by_email = await env.client.get(
        "/v1/contacts", params={"email": "seed7@example.test"}, headers=tenant.headers
    )
    assert by_email.status_code == 200, by_email.text
    assert [c["email"] for c in by_email.json()["data"]] == ["seed7@example.test"]
    users = await env.client.get("/v1/users", headers=tenant.headers)
    assert users.status_code == 200, users.text
    assert len(users.json()["data"]) == 2

    # The neighbour on A saw nothing of it.
    assert await counts(env, A, neighbour) == neighbour_before
    await assert_served_as_written(env, neighbour, neighbour_seeded)

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
    assert (await counts(env, B, tenant))["contact"] == on_b["contact"] + 1


async def test_the_mover_killed_after_each_state_is_resumed_by_another(env: Env) -> None:
    tenant = await env.tenant()
    seeded = await seed(env, tenant, contacts=20)
    move = await env.mover().plan_move(uuid.UUID(tenant.id), B)
    states: list[MoveState] = [move.state]
    acked: dict[str, dict[str, Any]] = {}
    while not move.finished:
        # A new mover each time: the previous one "died" after its step.
        move = await env.mover(announce=False).run_move(move.id, max_steps=1)
        states.append(move.state)
        await assert_one_writable(env, tenant)
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
    assert states == list(MOVE_PATH)
    assert await directory(env, tenant) == (B, 2)
    assert set((await counts(env, A, tenant)).values()) == {0}
    await assert_served_as_written(env, tenant, seeded | acked)
    assert await leftovers(env, move.id) == []


async def test_a_difference_found_by_verification_rolls_the_move_back(env: Env) -> None:
    tenant = await env.tenant()
    seeded = await seed(env, tenant, contacts=15)
    # Reading the log numbers the seed's events now rather than under the fence, which
    # would change the counts compared below (not the events).
    resp = await env.client.get("/v1/events", headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    before = await counts(env, A, tenant)
    move = await env.mover().plan_move(uuid.UUID(tenant.id), B)
    while move.state is not MoveState.VERIFYING:
        move = await env.mover().run_move(move.id, max_steps=1)
    # A row on the target that is not what the source has (replication cannot undo it:
    # the source row does not change again).
    victim = next(iter(seeded))
    await query(
        env.url(B), "UPDATE contact SET title = 'tampered' WHERE id = $1", uuid.UUID(victim)
    )

    failed = await env.mover().run_move(move.id)
    assert failed.state is MoveState.FAILED
    assert failed.error is not None
    assert "contact" in failed.error
    verified = failed.progress["verified"]["contact"]
    assert verified["matches"] is False
    # Found under the fence among the rows written since the live comparison, which
    # the tampering came after.
    assert failed.progress["verify_mode"] == "delta"
    # The source serves as before, writable at its epoch; the target keeps nothing.
    assert await directory(env, tenant) == (A, 1)
    assert await residency(env, A, tenant) == (1, True)
    assert set((await counts(env, B, tenant)).values()) == {0}
    assert await counts(env, A, tenant) == before
    assert await leftovers(env, move.id) == []
    resp = await env.client.post(
        "/v1/contacts", json={"last_name": "Still here"}, headers=tenant.headers
    )
    assert resp.status_code == 201, resp.text
    await assert_served_as_written(env, tenant, seeded)
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
    assert await residency(env, A, tenant) == (1, True)
    assert set((await counts(env, B, tenant)).values()) == {0}
    assert await leftovers(env, first.id) == []
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
    seeded = await seed(env, tenant, contacts=5)
    move = await env.mover().plan_move(uuid.UUID(tenant.id), B)
    while move.state is not MoveState.FREEZING:
        move = await env.mover().run_move(move.id, max_steps=1)
    # Fenced and verified: no shard takes the tenant's writes until the switch.
    assert await residency(env, A, tenant) == (1, False)
    frozen = await env.client.post("/v1/contacts", json={"last_name": "X"}, headers=tenant.headers)
    assert frozen.status_code == 503

    cancelled = await env.mover().cancel_move(move.id)
    assert cancelled.state is MoveState.CANCELLED
    assert await residency(env, A, tenant) == (1, True)
    assert await directory(env, tenant) == (A, 1)
    assert set((await counts(env, B, tenant)).values()) == {0}
    assert await leftovers(env, move.id) == []
    resp = await env.client.post("/v1/contacts", json={"last_name": "Y"}, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    await assert_served_as_written(env, tenant, seeded)
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
    seeded = await seed(env, tenant, contacts=30)
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
        await assert_one_writable(env, tenant)
    move = await env.mover().run_move(move.id)
    assert move.state is MoveState.DONE, move.error
    assert await directory(env, tenant) == (B, 2)
    assert set((await counts(env, A, tenant)).values()) == {0}
    await assert_served_as_written(env, tenant, seeded)
    assert await leftovers(env, move.id) == []
