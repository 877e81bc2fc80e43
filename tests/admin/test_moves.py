"""Tenant moves through the admin API (``/admin/v1/.../moves``), and the operations
built on them: draining a shard and rebalancing a region.

Shards on two throwaway servers with ``wal_level = logical``: mv-a (region mv-us) and
mv-d (mv-us) on the first, mv-b (mv-eu) and mv-c (mv-us) on the second, so a region
change and moves within a region both cross servers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest

from meridian.operations import drain_shard, rebalance, resume_move
from sharding.models import MoveState
from sharding.mover import move_lock_key
from tests.fixtures.api import Tenant
from tests.fixtures.moving import (
    LOGICAL,
    Env,
    Writer,
    assert_one_writable,
    assert_served_as_written,
    leftovers,
    moving_env,
    query,
    seed,
)
from tests.fixtures.response_models import checking
from tests.fixtures.users import PASSWORD, new_user, sign_in
from tests.fixtures.waiting import eventually

if TYPE_CHECKING:
    from tests.fixtures.databases import TestDatabases
    from tests.fixtures.pgcluster import StartCluster


pytestmark = pytest.mark.slow

A, B, C, D = "mv-a", "mv-b", "mv-c", "mv-d"
US, EU = "mv-us", "mv-eu"
REGIONS = {A: US, B: EU, C: US, D: US}
MOVE_OPERATIONS = {
    ("POST", "/admin/v1/tenants/{tenant_id}/moves"),
    ("GET", "/admin/v1/moves/{move_id}"),
    ("GET", "/admin/v1/moves"),
}


@pytest.fixture(scope="module")
async def env(databases: TestDatabases, pg_clusters: StartCluster) -> AsyncIterator[Env]:
    first, second = await asyncio.gather(
        asyncio.to_thread(pg_clusters, LOGICAL), asyncio.to_thread(pg_clusters, LOGICAL)
    )
    servers = {A: (first, "mv_a"), B: (second, "mv_b"), C: (second, "mv_c"), D: (first, "mv_d")}
    control_db = f"{databases.prefix}_mvapi_control"
    # The password grant on: users of a moved tenant sign in before and after its move.
    async with moving_env(databases, servers, REGIONS, control_db, password_grant=True) as moving:
        # D takes part in the rebalance and the drain only: no move picks it before.
        await shard_state(moving, D, "closed")
        yield moving


async def shard_state(env: Env, shard_id: str, state: str) -> None:
    control = env.settings.control_admin_dsn or ""
    await query(
        control.replace("+asyncpg", ""),
        "UPDATE shard SET state = $2 WHERE id = $1",
        shard_id,
        state,
    )
    await env.runtime.reload_topology()


async def contacts_on(env: Env, shard_id: str, tenant: Tenant) -> int:
    rows = await query(
        env.url(shard_id),
        "SELECT count(*) AS n FROM contact WHERE tenant_id = $1",
        uuid.UUID(tenant.id),
    )
    return int(rows[0]["n"])


async def until_finished(
    client: httpx.AsyncClient, headers: dict[str, str], move_id: str
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        resp = await client.get(f"/admin/v1/moves/{move_id}", headers=headers)
        assert resp.status_code == 200, resp.text
        move: dict[str, Any] = resp.json()
        return move if move["state"] in ("done", "failed", "cancelled") else None

    return await eventually(check, interval=0.1, what=f"move {move_id} to finish")


async def test_a_tenant_changes_region_through_the_admin_api(env: Env) -> None:
    c, admin = env.client, await env.admin.headers()
    tenant, neighbour = await env.tenant(A), await env.tenant(A)
    seeded = await seed(env, tenant, 20)
    first = next(iter(seeded.values()))
    # Cached before the move: the record and the directory entry.
    assert (await c.get(f"/v1/contacts/{first['id']}", headers=tenant.headers)).status_code == 200
    # A sales rep with a manager, signed in before the move, and a record of the rep's.
    manager = await new_user(c, tenant, role="sales_manager", password=PASSWORD)
    rep = await new_user(c, tenant, manager_id=manager["id"], password=PASSWORD)
    owned = await c.post(
        "/v1/contacts", json={"last_name": "Rep's", "owner_id": rep["id"]}, headers=tenant.headers
    )
    assert owned.status_code == 201, owned.text
    rep_headers = await sign_in(c, tenant, rep["email"])
    writer = Writer(c, tenant)
    writing = asyncio.create_task(writer.run())
    await asyncio.sleep(0.2)

    path = f"/admin/v1/tenants/{tenant.id}/moves"
    key = {**admin, "Idempotency-Key": f"move-{tenant.slug}"}
    with checking(c) as checker:
        resp = await c.post(path, json={"region": EU}, headers=key)
        assert resp.status_code == 201, resp.text
        planned = resp.json()
        assert resp.headers["Location"] == f"/admin/v1/moves/{planned['id']}"
        assert (planned["source_shard_id"], planned["target_shard_id"]) == (A, B)
        # A retry answers with the same move; the key with another request is refused.
        again = await c.post(path, json={"region": EU}, headers=key)
        assert again.status_code == 201, again.text
        assert again.json()["id"] == planned["id"]
        assert again.headers["Idempotent-Replayed"] == "true"
        other = await c.post(path, json={"target_shard_id": C}, headers=key)
        assert other.status_code == 422, other.text
        assert other.json()["type"].endswith("idempotency-key-reused")

        move = await until_finished(c, admin, planned["id"])
        listed = await c.get("/admin/v1/moves", params={"tenant_id": tenant.id}, headers=admin)
    assert checker.violations == []
    assert checker.exercised >= MOVE_OPERATIONS
    await asyncio.sleep(0.2)
    writer.stop.set()
    await writing

    assert move["state"] == "done", move
    assert move["error"] is None
    assert move["rows_copied"] == move["rows_total"] > 20
    assert move["tables"]["contact"]["copied"] >= 20
    assert all(v["matches"] for v in move["verified"].values()), move["verified"]
    assert move["freeze_ms"] is not None
    assert move["timings"] is not None
    assert move["deleted_from_source"]["contact"] >= 20
    assert [m["id"] for m in listed.json()["data"]] == [planned["id"]]
    done = await c.get("/admin/v1/moves", params={"state": "done"}, headers=admin)
    assert planned["id"] in [m["id"] for m in done.json()["data"]]

    # The region changed with the directory; the neighbour stayed.
    moved = (await c.get(f"/admin/v1/tenants/{tenant.id}", headers=admin)).json()
    assert (moved["shard_id"], moved["region"], moved["epoch"]) == (B, EU, 2)
    stayed = (await c.get(f"/admin/v1/tenants/{neighbour.id}", headers=admin)).json()
    assert (stayed["shard_id"], stayed["region"]) == (A, US)

    # Every acknowledged write is there, read from the new shard; nothing unexpected;
    # one writable copy; no replication object left.
    assert writer.unexpected == []
    assert writer.acked
    await assert_served_as_written(env, tenant, writer.acked)
    await assert_served_as_written(
        env, tenant, {k: v for k, v in seeded.items() if k not in writer.acked}
    )
    await assert_one_writable(env, tenant)
    assert await leftovers(env, uuid.UUID(planned["id"])) == []
    # The same token; the encrypted email reads and is found by its blind index; the
    # contact's timeline moved with it.
    read = (await c.get(f"/v1/contacts/{first['id']}", headers=tenant.headers)).json()
    assert read["email"] == first["email"]
    found = await c.get("/v1/contacts", params={"email": first["email"]}, headers=tenant.headers)
    assert [r["id"] for r in found.json()["data"]] == [first["id"]]
    timeline = await c.get(
        "/v1/activities", params={"contact_id": first["id"]}, headers=tenant.headers
    )
    assert timeline.status_code == 200, timeline.text
    assert [a["subject"] for a in timeline.json()["data"]] == ["Met"]
    # The rep's token from before the move still works, with the rep's record scope;
    # the manager signs in afterwards and sees the subordinate's record.
    mine = await c.get("/v1/contacts", headers=rep_headers)
    assert mine.status_code == 200, mine.text
    assert [r["id"] for r in mine.json()["data"]] == [owned.json()["id"]]
    manager_headers = await sign_in(c, tenant, manager["email"])
    theirs = await c.get(f"/v1/contacts/{owned.json()['id']}", headers=manager_headers)
    assert theirs.status_code == 200, theirs.text
    # Nothing of the tenant is left on the source.
    assert await contacts_on(env, A, tenant) == 0
    # Its events moved with it, numbered on the source under the fence: one log without
    # a gap, and what is written on the target comes after all of it.
    later = await c.post("/v1/contacts", json={"last_name": "Later"}, headers=tenant.headers)
    assert later.status_code == 201, later.text
    events = await all_events(c, tenant)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert (events[-1]["type"], events[-1]["record"]["id"]) == (
        "contact.created",
        later.json()["id"],
    )
    created = {e["record"]["id"] for e in events if e["type"] == "contact.created"}
    assert {r["id"] for r in seeded.values()} <= created


async def all_events(c: httpx.AsyncClient, tenant: Tenant) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        resp = await c.get(
            "/v1/events", params={"after": after, "limit": 200}, headers=tenant.headers
        )
        assert resp.status_code == 200, resp.text
        page = resp.json()
        found += page["data"]
        if page["next_cursor"] is None:
            return found
        after = int(page["next_cursor"])


async def test_moves_that_cannot_run_are_refused_with_problems(env: Env) -> None:
    c, admin = env.client, await env.admin.headers()
    tenant = await env.tenant(A)
    path = f"/admin/v1/tenants/{tenant.id}/moves"

    async def refused(body: dict[str, Any], status: int, words: str, url: str = path) -> None:
        resp = await c.post(url, json=body, headers=admin)
        assert resp.status_code == status, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        assert words in resp.json()["detail"], resp.json()

    await refused({"target_shard_id": A}, 409, "on shard mv-a already")
    await refused({"region": US}, 409, "in region 'mv-us' already")
    await refused({"target_shard_id": "mv-nowhere"}, 404, "No shard 'mv-nowhere'")
    await refused({"region": "mv-nowhere"}, 422, "no shard in region")
    await refused(
        {"target_shard_id": B}, 404, "No tenant", f"/admin/v1/tenants/{uuid.uuid4()}/moves"
    )
    # A region whose only shard takes no tenants.
    await shard_state(env, B, "closed")
    try:
        await refused({"region": EU}, 422, "no active shard")
        await refused({"target_shard_id": B}, 409, "Shard mv-b is closed")
    finally:
        await shard_state(env, B, "active")
    # Neither or both of target and region: the schema says one.
    for body in ({}, {"target_shard_id": B, "region": EU}):
        resp = await c.post(path, json=body, headers=admin)
        assert resp.status_code == 422, resp.text
    # Not a platform admin.
    resp = await c.post(path, json={"region": EU}, headers=tenant.headers)
    assert resp.status_code == 403, resp.text
    assert (await c.get(f"/admin/v1/tenants/{tenant.id}", headers=admin)).json()["shard_id"] == A


async def test_a_cancelled_move_leaves_the_tenant_where_it_was(env: Env) -> None:
    c, admin = env.client, await env.admin.headers()
    tenant = await env.tenant(A)
    await seed(env, tenant, 5)
    # Planned and copied by another process, which then stops.
    mover = env.mover()
    info = await mover.plan_move(uuid.UUID(tenant.id), C)
    await mover.run_move(info.id, max_steps=2)
    with checking(c) as checker:
        # A second move of the tenant while this one is not finished.
        second = await c.post(
            f"/admin/v1/tenants/{tenant.id}/moves", json={"target_shard_id": B}, headers=admin
        )
        assert second.status_code == 409, second.text
        assert "not finished" in second.json()["detail"]
        resp = await c.post(f"/admin/v1/moves/{info.id}/cancel", headers=admin)
        assert resp.status_code == 200, resp.text
        assert resp.json()["rolling_back_to"] == "cancelled"
        move = await until_finished(c, admin, str(info.id))
        assert move["state"] == "cancelled", move
        # Finished: neither cancelled nor resumed again.
        for action in ("cancel", "resume"):
            again = await c.post(f"/admin/v1/moves/{info.id}/{action}", headers=admin)
            assert again.status_code == 409, again.text
        missing = await c.post(f"/admin/v1/moves/{uuid.uuid4()}/cancel", headers=admin)
        assert missing.status_code == 404, missing.text
    assert checker.violations == []
    assert ("POST", "/admin/v1/moves/{move_id}/cancel") in checker.exercised
    assert (await c.get(f"/admin/v1/tenants/{tenant.id}", headers=admin)).json()["shard_id"] == A
    assert await contacts_on(env, C, tenant) == 0
    made = await c.post("/v1/contacts", json={"last_name": "After"}, headers=tenant.headers)
    assert made.status_code == 201, made.text


async def test_a_stalled_move_is_resumed_through_the_api(env: Env) -> None:
    c, admin = env.client, await env.admin.headers()
    tenant = await env.tenant(A)
    await seed(env, tenant, 5)
    mover = env.mover()
    info = await mover.plan_move(uuid.UUID(tenant.id), C)
    await mover.run_move(info.id, max_steps=3)  # its driver died while catching up
    with checking(c) as checker:
        resp = await c.post(f"/admin/v1/moves/{info.id}/resume", headers=admin)
        assert resp.status_code == 200, resp.text
        move = await until_finished(c, admin, str(info.id))
    assert checker.violations == []
    assert ("POST", "/admin/v1/moves/{move_id}/resume") in checker.exercised
    assert move["state"] == "done", move
    assert (await c.get(f"/admin/v1/tenants/{tenant.id}", headers=admin)).json()["shard_id"] == C


async def test_a_region_rebalances_and_a_shard_drains(env: Env) -> None:
    rt = env.runtime
    # D holds a big tenant and two small ones: the region's fullest shard.
    await shard_state(env, D, "active")
    big, small = await env.tenant(A), [await env.tenant(A) for _ in range(2)]
    mover = env.mover()
    for t in (big, *small):
        await mover.run_move((await mover.plan_move(uuid.UUID(t.id), D)).id)
    await seed(env, big, 120)
    for t in small:
        await seed(env, t, 3)

    planned = await rebalance(rt, region=US, tolerance=0.1, max_moves=5, dry_run=True, parallel=2)
    assert planned["dry_run"] is True
    assert planned["moves"], planned
    assert {m["from"] for m in planned["moves"]} == {D}, planned
    assert {m["to"] for m in planned["moves"]} <= {A, C}
    # The dry run moved nothing.
    for t in (big, *small):
        assert (await rt.directory.load(uuid.UUID(t.id))).shard_id == D  # type: ignore[union-attr]

    drained = await drain_shard(rt, D, parallel=2)
    assert drained["tenants_left"] == 0, drained
    assert {m["state"] for m in drained["moves"]} == {"done"}
    assert {m["tenant_id"] for m in drained["moves"]} >= {t.id for t in (big, *small)}
    for t in (big, *small):
        ctx = await rt.directory.load(uuid.UUID(t.id))
        assert ctx is not None
        assert ctx.shard_id in (A, C)
        resp = await env.client.get("/v1/contacts", headers=t.headers)
        assert resp.status_code == 200, resp.text
    shards = {s.id: s for s in await rt.reload_topology()}
    assert shards[D].state == "closed"
    # Nothing left to move: a second drain plans nothing.
    assert (await drain_shard(rt, D, parallel=2))["moves"] == []


async def test_resuming_a_move_another_process_drives_follows_it_to_its_end(env: Env) -> None:
    """`meridian moves resume` (and `tenants move --wait`) when an API instance's sweep
    took the move up first: it waits for that driver instead of failing."""
    tenant = await env.tenant(A)
    mover = env.mover()
    info = await mover.plan_move(uuid.UUID(tenant.id), C)
    control = env.settings.control_admin_dsn or ""
    other = await asyncpg.connect(control.replace("+asyncpg", ""))
    try:
        # The other process holds the move (as run_move does while driving it).
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", move_lock_key(info.id))
        following = asyncio.create_task(resume_move(env.runtime, info.id))
        await asyncio.sleep(1.0)
        assert not following.done()  # following, not failed
    finally:
        await other.close()
    # The other process now drives it (here: another mover), and the follower sees it end.
    driven = await env.mover().run_move(info.id)
    assert driven.state is MoveState.DONE
    followed = await following
    assert (followed["id"], followed["state"]) == (str(info.id), "done")
