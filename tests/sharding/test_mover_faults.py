"""Tenant moves through faults (``sharding.mover``): a shard going down mid-move, a
mover killed after each state, a catch-up that cannot finish in time, a table sync
left without its slot.

Two throwaway servers of this module's own (stopped and restarted here, so no other
module's) hold shards mf-a and mf-b; tenants are moved from mf-a to mf-b. Every test
ends with at most one writable copy of the tenant, every acknowledged write read back
identical, no replication object left and the neighbours (a tenant on each shard)
untouched.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from meridian_dev.postgres import LocalCluster
from sharding.models import MOVE_PATH, MoveState
from sharding.mover import (
    MoveInfo,
    MoveOptions,
    MoveRefusedError,
    MoveStalledError,
    replication_name,
)
from tests.fixtures.api import Tenant
from tests.fixtures.moving import (
    LOGICAL,
    REPO,
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

A, B = "mf-a", "mf-b"
REGIONS = {A: "mf-us", B: "mf-eu"}
# Quicker logical replication than the defaults, for the test's time only: the copy's
# table syncs run at once rather than two at a time, and a subscription whose
# publisher came back retries in 200 ms rather than 5 s.
SERVER = {
    **LOGICAL,
    "max_worker_processes": "24",
    "max_logical_replication_workers": "16",
    "max_sync_workers_per_subscription": "12",
    "wal_retrieve_retry_interval": "200ms",
}
OPTIONS = MoveOptions(copy_timeout=60, catch_up_timeout=30, fenced_catch_up_timeout=10)


@dataclass
class Neighbour:
    tenant: Tenant
    contacts: dict[str, dict[str, Any]]
    counts: dict[str, int]


@pytest.fixture(scope="module")
async def env(databases: TestDatabases, pg_clusters: StartCluster) -> AsyncIterator[Env]:
    server_a, server_b = await asyncio.gather(
        asyncio.to_thread(pg_clusters, SERVER), asyncio.to_thread(pg_clusters, SERVER)
    )
    servers = {A: (server_a, "mf_a"), B: (server_b, "mf_b")}
    async with moving_env(databases, servers, REGIONS, f"{databases.prefix}_mf_control") as env:
        yield env


@pytest.fixture(scope="module")
async def neighbours(env: Env) -> list[Neighbour]:
    """A tenant on each shard, never moved."""
    found = []
    for shard_id in (A, B):
        tenant = await env.tenant(shard_id)
        contacts = await seed(env, tenant, contacts=5)
        found.append(Neighbour(tenant, contacts, await counts(env, shard_id, tenant)))
    return found


# -- helpers ---------------------------------------------------------------------------


def _server(env: Env, shard_id: str) -> LocalCluster:
    return env.servers[shard_id][0]


async def _stop(env: Env, shard_id: str) -> None:
    # Like a crash: no shutdown checkpoint, recovered on the next start.
    await asyncio.to_thread(_server(env, shard_id).stop, "immediate")


async def _start(env: Env, shard_id: str) -> None:
    await asyncio.to_thread(_server(env, shard_id).start)


async def _served(env: Env, tenant: Tenant, within: float = 20.0) -> None:
    """Until the app serves the tenant (its shard's breaker closed again after a
    restart)."""
    deadline = time.monotonic() + within
    while True:
        resp = await env.client.get("/v1/contacts", params={"limit": 1}, headers=tenant.headers)
        if resp.status_code == 200:
            return
        assert resp.status_code == 503, resp.text
        assert time.monotonic() < deadline, "the tenant is not served again"
        await asyncio.sleep(0.1)


async def _acked_more(writer: Writer, than: int, within: float = 10.0) -> None:
    """Until the writer has had more than ``than`` writes acknowledged."""
    deadline = time.monotonic() + within
    while writer.acks <= than:
        assert not writer.unexpected, writer.unexpected
        assert time.monotonic() < deadline, f"no write acknowledged ({writer.refused} refused)"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def _writing(env: Env, tenant: Tenant) -> AsyncIterator[Writer]:
    """A Writer on the tenant for the block; every answer it had is a 2xx or a 503."""
    writer = Writer(env.client, tenant)
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        writer.stop.set()
        await task
    assert writer.unexpected == []


async def _assert_clean_end(
    env: Env,
    tenant: Tenant,
    move: MoveInfo,
    written: dict[str, dict[str, Any]],
    neighbours: list[Neighbour],
) -> None:
    """What every test ends with: one writable copy where the directory says, every
    acknowledged write read back as written, no replication object of the move left,
    the neighbours as they were."""
    assert move.finished, move
    await assert_one_writable(env, tenant)
    home, _ = await directory(env, tenant)
    other = B if home == A else A
    assert set((await counts(env, other, tenant)).values()) == {0}
    await assert_served_as_written(env, tenant, written)
    assert await leftovers(env, move.id) == []
    for n in neighbours:
        await _served(env, n.tenant)
        assert await counts(env, n.tenant.shard_id, n.tenant) == n.counts
        await assert_served_as_written(env, n.tenant, n.contacts)


# -- the tests ------------------------------------------------------------------------


async def test_a_target_down_before_the_fence_stalls_the_move_while_the_source_serves(
    env: Env, neighbours: list[Neighbour]
) -> None:
    tenant = await env.tenant()
    seeded = await seed(env, tenant, contacts=20)
    mover = env.mover(options=OPTIONS)
    move = await mover.plan_move(uuid.UUID(tenant.id), B)
    async with _writing(env, tenant) as writer:
        move = await mover.run_move(move.id, max_steps=1)
        for state, then in (
            (MoveState.COPYING, MoveState.CATCHING_UP),
            (MoveState.CATCHING_UP, MoveState.VERIFYING),
        ):
            assert move.state is state
            await _stop(env, B)
            with pytest.raises(MoveStalledError, match=B):
                await env.mover(options=OPTIONS).run_move(move.id)
            move = await mover.get_move(move.id)
            assert (move.state, move.rollback_to) == (state, None)
            assert move.error is not None
            assert f"shard {B} is unreachable" in move.error
            assert "will be retried" in move.error
            # The source takes the tenant's writes all along.
            await _acked_more(writer, writer.acks)
            assert await residency(env, A, tenant) == (1, True)
            await assert_one_writable(env, tenant, down=frozenset({B}))
            if state is MoveState.COPYING:
                # Nor is a move to it planned meanwhile.
                other = neighbours[0].tenant
                with pytest.raises(MoveRefusedError, match=f"shard {B} is unreachable"):
                    await mover.plan_move(uuid.UUID(other.id), B)
            await _start(env, B)
            move = await env.mover(options=OPTIONS).run_move(move.id, max_steps=1)
            assert move.error is None  # a step went through again
            for _ in range(3):
                if move.state is then:
                    break
                # The crash cut a table sync short between dropping its slot on the
                # source and recording so: the copy started over (planned).
                assert move.progress.get("copy_restarts"), move
                move = await env.mover(options=OPTIONS).run_move(move.id, max_steps=1)
            assert move.state is then
        assert writer.refused == 0  # not fenced yet
        move = await env.mover(options=OPTIONS).run_move(move.id)
        await _acked_more(writer, writer.acks)  # on the target now
    assert move.state is MoveState.DONE, move.error
    assert await directory(env, tenant) == (B, 2)
    await _assert_clean_end(env, tenant, move, seeded | writer.acked, neighbours)


async def test_a_target_down_after_the_fence_rolls_back_at_once(
    env: Env, neighbours: list[Neighbour]
) -> None:
    tenant = await env.tenant()
    seeded = await seed(env, tenant, contacts=20)
    mover = env.mover(options=OPTIONS)
    move = await mover.plan_move(uuid.UUID(tenant.id), B)
    async with _writing(env, tenant) as writer:
        while move.state is not MoveState.FREEZING:
            move = await mover.run_move(move.id, max_steps=1)
        # Verified and fenced: no shard takes the tenant's writes until the switch.
        assert await residency(env, A, tenant) == (1, False)
        await assert_one_writable(env, tenant)
        await _stop(env, B)
        with pytest.raises(MoveStalledError, match=B):
            await env.mover(options=OPTIONS).run_move(move.id)
        # Rolled back as far as the source goes: unfenced, its slot and publication
        # dropped; the rest waits for the target.
        move = await mover.get_move(move.id)
        assert not move.finished
        assert (move.state, move.rollback_to) == (MoveState.FREEZING, MoveState.FAILED)
        assert move.error is not None
        assert f"shard {B} is unreachable" in move.error
        assert "frozen" in move.error
        assert await residency(env, A, tenant) == (1, True)
        assert await directory(env, tenant) == (A, 1)
        await assert_one_writable(env, tenant, down=frozenset({B}))
        assert await leftovers(env, move.id, down=frozenset({B})) == []
        await _acked_more(writer, writer.acks)  # with the target still down

        await _start(env, B)
        name = replication_name(move.id)
        assert await query(env.url(B), "SELECT 1 FROM pg_subscription WHERE subname = $1", name)
        move = await env.mover(options=OPTIONS).run_move(move.id)
        assert move.state is MoveState.FAILED
        assert move.error is not None
        assert f"shard {B} is unreachable" in move.error
        assert "frozen" in move.error
        assert "rolling back" not in move.error  # the reason, not how the rollback went
        assert set((await counts(env, B, tenant)).values()) == {0}
        assert await leftovers(env, move.id) == []
        await assert_one_writable(env, tenant)

        # The tenant moves all the same, later.
        again = await mover.plan_move(uuid.UUID(tenant.id), B)
        again = await env.mover(options=OPTIONS).run_move(again.id)
        await _acked_more(writer, writer.acks)
    assert again.state is MoveState.DONE, again.error
    assert await directory(env, tenant) == (B, 2)
    assert await leftovers(env, move.id) == []
    await _assert_clean_end(env, tenant, again, seeded | writer.acked, neighbours)


async def test_a_target_lost_while_the_fence_waits_for_it_rolls_back_at_once(
    env: Env, neighbours: list[Neighbour]
) -> None:
    tenant = await env.tenant()
    seeded = await seed(env, tenant, contacts=20)
    mover = env.mover(options=OPTIONS)
    move = await mover.plan_move(uuid.UUID(tenant.id), B)
    async with _writing(env, tenant) as writer:
        while move.state is not MoveState.VERIFYING:
            move = await mover.run_move(move.id, max_steps=1)
        # The target stops applying: the fenced step waits for it (up to 10 s).
        await query(env.url(B), f"ALTER SUBSCRIPTION {replication_name(move.id)} DISABLE")
        verifying = asyncio.create_task(env.mover(options=OPTIONS).run_move(move.id))
        deadline = time.monotonic() + 10
        while await residency(env, A, tenant) != (1, False):
            assert not verifying.done(), verifying
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await assert_one_writable(env, tenant)  # none: frozen
        started = time.monotonic()
        await _stop(env, B)
        with pytest.raises(MoveStalledError, match=B):
            await verifying
        # Seen at once, not at the fenced catch-up's deadline.
        assert time.monotonic() - started < 5
        move = await mover.get_move(move.id)
        assert (move.state, move.rollback_to) == (MoveState.VERIFYING, MoveState.FAILED)
        assert await residency(env, A, tenant) == (1, True)
        assert await leftovers(env, move.id, down=frozenset({B})) == []
        await _acked_more(writer, writer.acks)

        await _start(env, B)
        move = await env.mover(options=OPTIONS).run_move(move.id)
        assert move.state is MoveState.FAILED
        assert move.error is not None
        assert f"shard {B} is unreachable" in move.error
    assert await directory(env, tenant) == (A, 1)
    await _assert_clean_end(env, tenant, move, seeded | writer.acked, neighbours)


async def test_a_source_down_while_writes_are_frozen_stalls_the_move_until_it_is_back(
    env: Env, neighbours: list[Neighbour]
) -> None:
    tenant = await env.tenant()
    seeded = await seed(env, tenant, contacts=20)
    mover = env.mover(options=OPTIONS)
    move = await mover.plan_move(uuid.UUID(tenant.id), B)
    async with _writing(env, tenant) as writer:
        while move.state is not MoveState.FREEZING:
            move = await mover.run_move(move.id, max_steps=1)
        await _stop(env, A)
        with pytest.raises(MoveStalledError, match=A):
            await env.mover(options=OPTIONS).run_move(move.id)
        # Its only shard is down: no rollback (it could not unfence anything), no
        # switch without it; the target still refuses the tenant.
        move = await mover.get_move(move.id)
        assert (move.state, move.rollback_to) == (MoveState.FREEZING, None)
        assert move.error is not None
        assert f"shard {A} is unreachable" in move.error
        assert "freezing will be retried" in move.error
        await assert_one_writable(env, tenant, down=frozenset({A}))
        assert await residency(env, B, tenant) == (1, False)

        await _start(env, A)
        acks = writer.acks
        move = await env.mover(options=OPTIONS).run_move(move.id)
        await _acked_more(writer, acks)
    assert move.state is MoveState.DONE, move.error
    assert move.error is None
    assert await directory(env, tenant) == (B, 2)
    await _assert_clean_end(env, tenant, move, seeded | writer.acked, neighbours)


async def test_a_source_down_mid_copy_stalls_the_move_until_it_is_back(
    env: Env, neighbours: list[Neighbour]
) -> None:
    tenant = await env.tenant()
    seeded = await seed(env, tenant, contacts=20)
    mover = env.mover(options=OPTIONS)
    move = await mover.plan_move(uuid.UUID(tenant.id), B)
    async with _writing(env, tenant) as writer:
        move = await mover.run_move(move.id, max_steps=1)
        assert move.state is MoveState.COPYING
        await _acked_more(writer, 0)
        await _stop(env, A)
        with pytest.raises(MoveStalledError, match=A):
            await env.mover(options=OPTIONS).run_move(move.id)
        move = await mover.get_move(move.id)
        assert (move.state, move.rollback_to) == (MoveState.COPYING, None)
        assert move.error is not None
        assert f"shard {A} is unreachable" in move.error
        # Its only shard is down: nobody takes the tenant's writes, the target least.
        await assert_one_writable(env, tenant, down=frozenset({A}))
        assert await residency(env, B, tenant) == (1, False)

        await _start(env, A)
        await _served(env, tenant)
        acks = writer.acks
        move = await env.mover(options=OPTIONS).run_move(move.id)
        await _acked_more(writer, acks)
    assert move.state is MoveState.DONE, move.error
    assert move.error is None
    assert await directory(env, tenant) == (B, 2)
    await _assert_clean_end(env, tenant, move, seeded | writer.acked, neighbours)


async def test_a_catch_up_past_its_deadline_rolls_the_move_back(
    env: Env, neighbours: list[Neighbour]
) -> None:
    tenant = await env.tenant()
    seeded = await seed(env, tenant, contacts=20)
    mover = env.mover(options=OPTIONS)
    move = await mover.plan_move(uuid.UUID(tenant.id), B)
    move = await mover.run_move(move.id, max_steps=2)
    assert move.state is MoveState.CATCHING_UP
    # The target stops applying, while the tenant's writes go on.
    await query(env.url(B), f"ALTER SUBSCRIPTION {replication_name(move.id)} DISABLE")
    async with _writing(env, tenant) as writer:
        await _acked_more(writer, 0)
        impatient = env.mover(options=MoveOptions(catch_up_timeout=1.0))
        move = await impatient.run_move(move.id)
        await _acked_more(writer, writer.acks)
    assert move.state is MoveState.FAILED
    assert move.error is not None
    assert "catch-up did not finish in 1.0s" in move.error
    assert writer.refused == 0  # never fenced
    assert await residency(env, A, tenant) == (1, True)
    assert await directory(env, tenant) == (A, 1)
    await _assert_clean_end(env, tenant, move, seeded | writer.acked, neighbours)


async def test_a_table_sync_that_lost_its_slot_starts_the_copy_over(
    env: Env, neighbours: list[Neighbour]
) -> None:
    # What a shard crashing mid-copy can leave, made here by hand: PostgreSQL drops a
    # table sync's slot on the source before it commits the table's next state on the
    # target, so a crash in between leaves a table copied ('f') whose sync has no slot
    # to go on from, and is retried for ever.
    tenant = await env.tenant()
    seeded = await seed(env, tenant, contacts=20)
    mover = env.mover(options=OPTIONS)
    move = await mover.plan_move(uuid.UUID(tenant.id), B)
    async with _writing(env, tenant) as writer:
        move = await mover.run_move(move.id, max_steps=1)
        assert move.state is MoveState.COPYING
        name = replication_name(move.id)
        states = (
            "SELECT r.srsubstate::text FROM pg_subscription_rel r "
            "JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1"
        )
        deadline = time.monotonic() + 30  # until the copy is done, every table
        while {r[0] for r in await query(env.url(B), states, name)} != {"r"}:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await query(env.url(B), f"ALTER SUBSCRIPTION {name} DISABLE")
        await query(
            env.url(B),
            "UPDATE pg_subscription_rel SET srsubstate = 'f', srsublsn = NULL "
            "WHERE srrelid = 'contact'::regclass "
            "AND srsubid = (SELECT oid FROM pg_subscription WHERE subname = $1)",
            name,
        )
        await query(env.url(B), f"ALTER SUBSCRIPTION {name} ENABLE")
        move = await env.mover(options=OPTIONS).run_move(move.id)
        await _acked_more(writer, writer.acks)
    assert move.state is MoveState.DONE, move.error
    assert move.progress["copy_restarts"] == 1
    assert await directory(env, tenant) == (B, 2)
    await _assert_clean_end(env, tenant, move, seeded | writer.acked, neighbours)


# Movers in processes of their own: for each line on stdin a child forked from this
# process (whose imports, the slow part of a start, are done once) takes ``max_steps``
# steps of the move and then dies by SIGKILL, so whatever it held (its control-plane
# session, its connections) is cut, not closed; how the child ended goes to stdout.
_DRIVER = """
import asyncio, os, signal, sys, uuid
from sqlalchemy.ext.asyncio import create_async_engine
from sharding.mover import MoveBusyError, Mover

async def steps() -> None:
    mover = Mover(create_async_engine(sys.argv[1]))
    for _ in range(200):
        try:
            await mover.run_move(uuid.UUID(sys.argv[2]), max_steps=int(sys.argv[3]))
            break
        except MoveBusyError:  # the last one's session may not be ended yet
            await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)

for _ in sys.stdin:
    child = os.fork()
    if child == 0:
        try:
            asyncio.run(steps())
        finally:
            os._exit(1)  # not reached unless the steps failed
    _, status = os.waitpid(child, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


async def test_a_mover_killed_after_each_state_is_resumed_by_the_next(
    env: Env, neighbours: list[Neighbour]
) -> None:
    tenant = await env.tenant()
    seeded = await seed(env, tenant, contacts=20)
    move = await env.mover().plan_move(uuid.UUID(tenant.id), B)
    states = [MoveState.PLANNED]
    movers = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _DRIVER,
        env.runtime.settings.control_dsn,
        str(move.id),
        "1",
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert movers.stdin is not None
    assert movers.stdout is not None
    try:
        async with _writing(env, tenant) as writer:
            for _ in range(6):
                movers.stdin.write(b"step\n")
                await movers.stdin.drain()
                ended = await asyncio.wait_for(movers.stdout.readline(), 60)
                assert int(ended) == -signal.SIGKILL
                move = await env.mover().get_move(move.id)
                states.append(move.state)
                assert move.error is None, move.error
                await assert_one_writable(env, tenant)
                if move.state is not MoveState.FREEZING:
                    # Written by whichever shard serves the tenant, before the fence (which
                    # the verifying step sets) and after the switch.
                    await _acked_more(writer, writer.acks)
            move = await env.mover().run_move(move.id)
            states.append(move.state)
    finally:
        movers.stdin.close()
        try:
            await asyncio.wait_for(movers.wait(), 10)
        except TimeoutError:
            movers.kill()
            await movers.wait()
    assert states == list(MOVE_PATH)
    assert await directory(env, tenant) == (B, 2)
    await _assert_clean_end(env, tenant, move, seeded | writer.acked, neighbours)
