"""The background move driver (``sharding.driver``): the sweep resumes a move nobody
drives, leaves alone one another process drives, and a stopped driver leaves its move
resumable. Two shard databases on one throwaway server with ``wal_level = logical``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import asyncpg
import pytest

from sharding.driver import MoveDriver
from sharding.models import MoveState
from sharding.mover import MoveInfo, Mover, move_lock_key
from tests.fixtures.databases import raw_dsn
from tests.fixtures.moving import LOGICAL, Env, assert_one_writable, leftovers, moving_env, seed
from tests.fixtures.waiting import eventually

if TYPE_CHECKING:
    from tests.fixtures.databases import TestDatabases
    from tests.fixtures.pgcluster import StartCluster


pytestmark = pytest.mark.slow

A, B = "dr-a", "dr-b"


@pytest.fixture(scope="module")
async def env(databases: TestDatabases, pg_clusters: StartCluster) -> AsyncIterator[Env]:
    server = await asyncio.to_thread(pg_clusters, LOGICAL)
    servers = {A: (server, "dr_a"), B: (server, "dr_b")}
    regions = {A: "dr-one", B: "dr-two"}
    async with moving_env(databases, servers, regions, f"{databases.prefix}_dr_control") as moving:
        yield moving


async def finished(mover: Mover, move_id: uuid.UUID) -> MoveInfo:
    async def check() -> MoveInfo | None:
        info = await mover.get_move(move_id)
        return info if info.finished else None

    return await eventually(check, interval=0.05, what=f"move {move_id} to finish")


async def test_the_sweep_resumes_a_move_nobody_drives(env: Env) -> None:
    tenant = await env.tenant(A)
    await seed(env, tenant, contacts=5)
    mover = env.mover()
    info = await mover.plan_move(uuid.UUID(tenant.id), B)
    await mover.run_move(info.id, max_steps=1)  # its driver died while copying

    driver = MoveDriver(env.mover(), env.runtime.control, sweep_interval=0.1)
    driver.start()
    try:
        done = await finished(mover, info.id)
    finally:
        await driver.stop()
    assert done.state is MoveState.DONE
    await assert_one_writable(env, tenant)
    assert await leftovers(env, info.id) == []


async def test_a_move_another_process_drives_is_left_to_it(env: Env) -> None:
    tenant = await env.tenant(A)
    mover = env.mover()
    info = await mover.plan_move(uuid.UUID(tenant.id), B)
    # Another process holds the move's lock (as run_move does while it drives).
    other = await asyncpg.connect(raw_dsn(env.settings.control_dsn.rsplit("/", 1)[1]))
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", move_lock_key(info.id))
        driver = MoveDriver(env.mover(), env.runtime.control, sweep_interval=0)
        assert info.id in await driver.sweep()
        await asyncio.sleep(0.5)
        assert not driver.driving(info.id)  # it gave up at once: busy
        assert (await mover.get_move(info.id)).state is MoveState.PLANNED
    finally:
        await other.close()  # that process dies: its lock goes with its connection
    driver.drive(info.id)
    assert (await finished(mover, info.id)).state is MoveState.DONE


async def test_a_stopped_driver_leaves_its_move_resumable(env: Env) -> None:
    tenant = await env.tenant(A)
    await seed(env, tenant, contacts=5)
    mover = env.mover()
    info = await mover.plan_move(uuid.UUID(tenant.id), B)
    driver = MoveDriver(env.mover(), env.runtime.control, sweep_interval=0)
    driver.drive(info.id)

    async def started() -> bool:
        return (await mover.get_move(info.id)).state is not MoveState.PLANNED

    await eventually(started, what="the copy to start")
    await driver.stop()  # the instance shuts down mid-move, while the copy runs
    stopped = await mover.get_move(info.id)
    assert not stopped.finished
    await assert_one_writable(env, tenant)
    # Unlocked with the cancelled task: any process resumes it at once.
    assert (await mover.run_move(info.id)).state is MoveState.DONE
    await assert_one_writable(env, tenant)
    assert await leftovers(env, info.id) == []
