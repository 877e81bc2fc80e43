"""Online moves of one tenant between shards, as a resumable state machine.

A move copies the tenant's rows from its shard to another (another PostgreSQL server,
possibly) with PostgreSQL 15 row-filtered logical replication, fences the source,
checks both sides match, flips the directory to the target (``epoch + 1``) and deletes
the tenant from the source. Every step reads the move's row in the control plane
(``tenant_move``), does idempotent work and records the next state, so a mover killed
at any point is resumed by any process with :meth:`Mover.run_move`.

At every moment exactly one copy of the tenant accepts writes: the source until the
fence, nobody during the freeze, the target after the switch. The target's residency
row is written by the mover, not replicated: non-writable at the old epoch until the
switch makes it writable at the new one (a replicated copy would arrive writable).

A shard that cannot be reached stalls the move where it is: the cause is recorded as
its error, :class:`MoveStalledError` is raised, and the move goes on when it is run
again. Only while the source is fenced does a target that is gone roll the move back
instead (the tenant's writes are frozen, so waiting is worse than starting over); the
source is unfenced without the target, whose share of the cleanup waits for its return.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn
from uuid import UUID

import asyncpg
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from uuid_utils.compat import uuid7

from sharding import verify
from sharding.catalog import quote_ident, tenant_tables
from sharding.engine import ShardEngine, asyncpg_dsn
from sharding.errors import ShardingError, UnknownShardError
from sharding.models import FINAL_MOVE_STATES, MoveState, Shard, TenantMove
from sharding.tenant_rows import SESSION, delete_tenant_rows
from tenancy.models import DirectoryEntry, Tenant

log = logging.getLogger("sharding.mover")

RESIDENCY = "tenant_residency"
_UNFINISHED = "tenant {} has a move that is not finished"
# Session settings of the mover's shard connections: row text (hashed to compare both
# sides) must render the same on both servers.
_SESSION = {**SESSION, "application_name": "meridian-mover"}
# What a shard that cannot be reached looks like: a refused or timed-out connection, a
# server shutting down or starting up, a connection lost mid-query (and "connection is
# closed" on its next use). Which shard it was is asked afterwards (``_unreachable``).
_UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
)
# How long a shard may take to answer whether it is there at all.
_PROBE_TIMEOUT = 3.0


class MoveError(ShardingError):
    """A move cannot be planned or driven; the message says why."""


class MoveNotFoundError(MoveError):
    def __init__(self, what: str) -> None:
        super().__init__(what)


class MoveConflictError(MoveError):
    """The move conflicts with the tenant's state: it is on the target already, or
    another move of it is not finished."""


class MoveRefusedError(MoveError):
    """A shard cannot take part in a move (its settings, engine, schema or rows)."""


class MoveBusyError(MoveError):
    """Another process is driving this move right now."""


class MoveStalledError(MoveError):
    """The move cannot go on for now (a shard cannot be reached): the cause is recorded
    as its error and it stays resumable; running it again goes on from where it is."""


@dataclass(frozen=True, slots=True)
class MoveOptions:
    # How long the initial copy may take before the move fails and is rolled back.
    copy_timeout: float = 900.0
    # How long the target may take to apply what changed during the copy.
    catch_up_timeout: float = 120.0
    # How long the fence waits for in-flight writers (lock_timeout of its UPDATE).
    fence_lock_timeout: float = 5.0
    # How long, once fenced, the target may take to apply everything up to the fence;
    # writes are frozen meanwhile, so past it the move is rolled back.
    fenced_catch_up_timeout: float = 10.0
    poll_interval: float = 0.02
    delete_batch: int = 1000


@dataclass(frozen=True, slots=True)
class MoveInfo:
    """A move as the control plane records it."""

    id: UUID
    tenant_id: UUID
    source_shard_id: str
    target_shard_id: str
    epoch: int
    state: MoveState
    rollback_to: MoveState | None
    progress: Mapping[str, Any]
    lag_bytes: int | None
    fenced_at: datetime | None
    freeze_ms: int | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_MOVE_STATES


def _info(row: Any) -> MoveInfo:
    return MoveInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        source_shard_id=row.source_shard_id,
        target_shard_id=row.target_shard_id,
        epoch=row.epoch,
        state=MoveState(row.state),
        rollback_to=MoveState(row.rollback_to) if row.rollback_to else None,
        progress=row.progress or {},
        lag_bytes=row.lag_bytes,
        fenced_at=row.fenced_at,
        freeze_ms=row.freeze_ms,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


def replication_name(move_id: UUID) -> str:
    """The name of the move's publication, replication slot and subscription."""
    return f"meridian_move_{move_id.hex}"


def verify_slot_name(move_id: UUID) -> str:
    """The slot that marks where the live part of the move's verification began."""
    return verify_slot_name_of(replication_name(move_id))


def verify_slot_name_of(replication: str) -> str:
    return f"{replication}_v"


def move_lock_key(move_id: UUID) -> int:
    """The session advisory lock a process holds on the control plane while it drives
    the move: the random tail of the UUIDv7, as a signed bigint."""
    return int.from_bytes(move_id.bytes[8:], "big", signed=True)


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class _Shard:
    id: str
    admin_dsn: str
    engine: str


Invalidate = Callable[[UUID], Awaitable[None]]


class Mover:
    """Plans, drives, resumes and cancels tenant moves.

    ``control`` is the control plane's engine (the app role may run it: it reads the
    topology and writes ``tenant_move`` and ``tenant_directory``); shards are reached
    with their admin DSNs, which must be superusers (a subscription is created by a
    superuser, and the cleanup deletes with foreign-key triggers off). ``invalidate``
    is told the tenant's directory entry changed (the app publishes it to every
    instance); without it, instances notice by the shard refusing their stale entry.
    ``on_fence`` are statements the shards' schema needs run on the source in the
    fence's transaction, the tenant's id as ``$1``: work that must be final before the
    last copy (the platform numbers the tenant's waiting events there).
    """

    def __init__(
        self,
        control: AsyncEngine,
        *,
        invalidate: Invalidate | None = None,
        options: MoveOptions | None = None,
        on_fence: Sequence[str] = (),
    ) -> None:
        self._control = control
        self._invalidate = invalidate
        self.options = options or MoveOptions()
        self._on_fence = tuple(on_fence)

    # -- the public surface --------------------------------------------------------------

    async def plan_move(
        self,
        tenant_id: UUID,
        target_shard_id: str,
        *,
        creation_key: str | None = None,
        creation_fingerprint: bytes | None = None,
    ) -> MoveInfo:
        """Record a move of the tenant to ``target_shard_id`` (state ``planned``) after
        checking that it can run; nothing is changed on the shards yet. The request's
        Idempotency-Key and fingerprint, if any, are recorded with it.

        Raises MoveNotFoundError (no such tenant), UnknownShardError (no such shard),
        MoveConflictError (already on that shard, or another move is unfinished) and
        MoveRefusedError (a shard cannot take part: why is in the message)."""
        async with self._control.connect() as conn:
            found = (
                await conn.execute(
                    select(Tenant.status, DirectoryEntry.shard_id, DirectoryEntry.epoch)
                    .join(DirectoryEntry, DirectoryEntry.tenant_id == Tenant.id)
                    .where(Tenant.id == tenant_id)
                )
            ).one_or_none()
            if found is None or found.status == "deleted":
                raise MoveNotFoundError(f"no tenant {tenant_id}")
            if found.status == "provisioning":
                raise MoveConflictError(f"tenant {tenant_id} is still being onboarded")
            if found.shard_id == target_shard_id:
                raise MoveConflictError(f"tenant {tenant_id} is on shard {target_shard_id} already")
            if await conn.scalar(
                select(func.count()).where(
                    TenantMove.tenant_id == tenant_id,
                    TenantMove.state.not_in([s.value for s in FINAL_MOVE_STATES]),
                )
            ):
                raise MoveConflictError(_UNFINISHED.format(tenant_id))
            source = await self._shard(conn, found.shard_id)
            target = await self._shard(conn, target_shard_id)
            target_state, dedicated = (
                await conn.execute(
                    select(Shard.state, Shard.dedicated).where(Shard.id == target_shard_id)
                )
            ).one()
            if target_state != "active":
                # closed: takes no new tenants (full, or being drained); offline: out of use.
                raise MoveRefusedError(f"shard {target_shard_id} is {target_state}")
            if dedicated and await conn.scalar(
                select(func.count()).where(DirectoryEntry.shard_id == target_shard_id)
            ):
                raise MoveConflictError(f"dedicated shard {target_shard_id} holds a tenant already")
        await self._check_shards(tenant_id, source, target)
        move_id = UUID(str(uuid7()))
        try:
            async with self._control.begin() as conn:
                await conn.execute(
                    insert(TenantMove).values(
                        id=move_id,
                        tenant_id=tenant_id,
                        source_shard_id=source.id,
                        target_shard_id=target.id,
                        epoch=found.epoch,
                        state=MoveState.PLANNED.value,
                        creation_key=creation_key,
                        creation_fingerprint=creation_fingerprint,
                    )
                )
        except IntegrityError as exc:
            if "uq_tenant_move_unfinished" in str(exc.orig):
                # Planned meanwhile by another process (the check above raced it).
                raise MoveConflictError(_UNFINISHED.format(tenant_id)) from exc
            raise
        return await self.get_move(move_id)

    async def get_move(self, move_id: UUID) -> MoveInfo:
        async with self._control.connect() as conn:
            row = (
                await conn.execute(select(TenantMove).where(TenantMove.id == move_id))
            ).one_or_none()
        if row is None:
            raise MoveNotFoundError(f"no move {move_id}")
        return _info(row)

    async def planned_with(self, tenant_id: UUID, key: str) -> tuple[MoveInfo, bytes | None] | None:
        """The tenant's move planned with Idempotency-Key ``key``, and the fingerprint
        of the request that planned it."""
        async with self._control.connect() as conn:
            row = (
                await conn.execute(
                    select(TenantMove).where(
                        TenantMove.tenant_id == tenant_id, TenantMove.creation_key == key
                    )
                )
            ).one_or_none()
        return None if row is None else (_info(row), row.creation_fingerprint)

    async def list_moves(
        self,
        *,
        tenant_id: UUID | None = None,
        state: MoveState | str | None = None,
        limit: int = 100,
        before: UUID | None = None,
    ) -> list[MoveInfo]:
        """Moves, newest first (ids are time-ordered); ``before``: those older than that
        move (the next page)."""
        stmt = select(TenantMove).order_by(TenantMove.id.desc()).limit(limit)
        if before is not None:
            stmt = stmt.where(TenantMove.id < before)
        if tenant_id is not None:
            stmt = stmt.where(TenantMove.tenant_id == tenant_id)
        if state is not None:
            stmt = stmt.where(TenantMove.state == MoveState(state).value)
        async with self._control.connect() as conn:
            return [_info(r) for r in (await conn.execute(stmt)).all()]

    async def run_move(self, move_id: UUID, *, max_steps: int | None = None) -> MoveInfo:
        """Drive the move until it is finished (or ``max_steps`` steps have run) and
        return where it stands. Resuming a move is the same call, from any process;
        while one process drives a move, another gets MoveBusyError. A shard that
        cannot be reached stops it with MoveStalledError (the move records why): run it
        again later."""
        steps = 0
        async with self._driving(move_id):
            info = await self.get_move(move_id)
            while not info.finished and (max_steps is None or steps < max_steps):
                info = await self._step(info)
                steps += 1
        return info

    resume = run_move

    async def cancel_move(self, move_id: UUID) -> MoveInfo:
        """Roll the move back (before it switched): the source serves the tenant as
        before and the target keeps nothing of it. When another process is driving the
        move, the request is recorded and that process rolls back at its next step."""
        await self.request_cancel(move_id)
        try:
            return await self.run_move(move_id)
        except (MoveBusyError, MoveStalledError):
            # Stalled: a shard is down; the rollback is recorded and finishes on a resume.
            return await self.get_move(move_id)

    async def request_cancel(self, move_id: UUID) -> MoveInfo:
        """Record that the move is to be rolled back, and return it; whoever drives it
        next (or drives it now: at its next step or wait) rolls it back."""
        async with self._control.begin() as conn:
            row = (
                await conn.execute(
                    select(TenantMove).where(TenantMove.id == move_id).with_for_update()
                )
            ).one_or_none()
            if row is None:
                raise MoveNotFoundError(f"no move {move_id}")
            info = _info(row)
            if info.finished:
                raise MoveConflictError(f"move {move_id} is {info.state.value} already")
            if info.state in (MoveState.SWITCHED, MoveState.CLEANING):
                raise MoveConflictError(
                    f"move {move_id} has switched the tenant to its target; it can only finish"
                )
            if info.rollback_to is None:
                await conn.execute(
                    update(TenantMove)
                    .where(TenantMove.id == move_id)
                    .values(
                        rollback_to=MoveState.CANCELLED.value,
                        error="cancelled",
                        updated_at=func.now(),
                    )
                )
        return await self.get_move(move_id)

    # -- driving -----------------------------------------------------------------------

    @asynccontextmanager
    async def _driving(self, move_id: UUID) -> AsyncIterator[None]:
        """Hold the move's advisory lock in the control plane while driving it: a
        session lock, so a driver that dies (its connection with it) frees the move for
        whoever resumes it."""
        async with self._control.connect() as conn:
            key = move_lock_key(move_id)
            got = await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
            await conn.commit()
            if not got:
                raise MoveBusyError(f"move {move_id} is being driven by another process")
            try:
                yield
            finally:
                try:
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    await conn.commit()
                except BaseException:
                    # A connection that may still hold the lock must not go back to the pool.
                    await conn.invalidate()
                    raise

    async def _step(self, info: MoveInfo) -> MoveInfo:
        """One step from the recorded state; returns the move as recorded after it."""
        try:
            await self._advance(info)
        except _UNREACHABLE as exc:
            await self._lost_shard(info.id, exc)
        else:
            if info.error is not None and info.rollback_to is None:
                await self._clear_error(info.id)
        return await self.get_move(info.id)

    async def _advance(self, info: MoveInfo) -> None:
        if info.rollback_to is not None:
            await self._roll_back(info)
            return
        try:
            match info.state:
                case MoveState.PLANNED:
                    await self._start_replication(info)
                case MoveState.COPYING:
                    await self._wait_for_copy(info)
                case MoveState.CATCHING_UP:
                    await self._catch_up(info)
                case MoveState.VERIFYING:
                    await self._fence_and_verify(info)
                case MoveState.FREEZING:
                    await self._switch(info)
                case MoveState.SWITCHED:
                    await self._retire_source(info)
                case MoveState.CLEANING:
                    await self._clean_up(info)
        except _Cancelled:
            await self._roll_back(await self.get_move(info.id))
        except _Abort as abort:
            if info.state in (MoveState.SWITCHED, MoveState.CLEANING):
                # Past the switch there is no way back: the move stays where it is,
                # with the error, to be resumed once the cause is fixed.
                await self._stall(await self.get_move(info.id), str(abort))
            log.warning("move %s aborted: %s", info.id, abort)
            await self._record(info.id, rollback_to=MoveState.FAILED.value, error=str(abort))
            await self._roll_back(await self.get_move(info.id))

    async def _lost_shard(self, move_id: UUID, exc: BaseException) -> None:
        """A step could not reach a shard or lost its connection: the move waits where
        it is (MoveStalledError) to go on once the shard is back. Unless the source has
        the tenant's writes frozen for the move and can lift the freeze: then waiting
        for the target is worse than starting over, and the move is rolled back (at
        once, even with the target down)."""
        info = await self.get_move(move_id)
        source, target = await self._shards(info)
        down = await _unreachable(source, target)
        frozen = False
        if (
            info.rollback_to is None
            and info.state in (MoveState.VERIFYING, MoveState.FREEZING)
            and source.id not in down
        ):
            try:
                frozen = await _fenced(source, info)
            except _UNREACHABLE:
                down = [source.id, *down]
        what = _unreachable_note(down, exc)
        if not frozen:
            # Before the fence the source serves the tenant meanwhile; after the switch
            # there is no way back; with the source down the tenant is unavailable
            # whatever the move does, and switching without it cannot be checked.
            state = "the rollback" if info.rollback_to is not None else info.state.value
            await self._stall(info, f"{what}; {state} will be retried")
        reason = f"{what} while the tenant's writes were frozen for the move"
        log.warning("move %s rolls back: %s", info.id, reason)
        await self._record(info.id, rollback_to=MoveState.FAILED.value, error=reason)
        try:
            await self._roll_back(await self.get_move(info.id))
        except _UNREACHABLE as again:
            # The source went too (the target's absence the rollback handles itself).
            down = await _unreachable(source, target)
            note = _unreachable_note(down, again)
            await self._stall(await self.get_move(info.id), f"{note}; the rollback will be retried")

    async def _stall(self, info: MoveInfo, note: str) -> NoReturn:
        """Record why the move cannot go on for now and raise MoveStalledError; run
        again, it goes on from where it is (``info`` as recorded, for a rollback's
        reason)."""
        values: dict[str, Any] = {"error": note}
        if info.rollback_to is not None:
            # The rollback's reason is kept, to be the error again once it is done.
            reason = _rollback_reason(info)
            values = {
                "error": f"{reason}; rolling back: {note}",
                "progress": {**info.progress, "rollback_reason": reason},
            }
        await self._record(info.id, **values)
        log.warning("move %s stalled: %s", info.id, values["error"])
        raise MoveStalledError(f"move {info.id} stalled: {values['error']}")

    async def _clear_error(self, move_id: UUID) -> None:
        """A step went through after the move stalled: its error is history. Not once
        a rollback is asked for (its error says why), even meanwhile."""
        async with self._control.begin() as conn:
            await conn.execute(
                update(TenantMove)
                .where(TenantMove.id == move_id, TenantMove.rollback_to.is_(None))
                .values(error=None, updated_at=func.now())
            )

    # planned → copying
    async def _start_replication(self, info: MoveInfo) -> None:
        """Residency row on the target (non-writable, old epoch), publication and slot
        on the source, subscription on the target; each made only if missing."""
        source, target = await self._shards(info)
        name = replication_name(info.id)
        async with _connect(source) as src, _connect(target) as dst:
            tables = await _moved_tables(src)
            await dst.execute(
                "INSERT INTO tenant_residency (tenant_id, epoch, writable) VALUES ($1, $2, false) "
                "ON CONFLICT (tenant_id) DO NOTHING",
                info.tenant_id,
                info.epoch,
            )
            if not await src.fetchval("SELECT 1 FROM pg_publication WHERE pubname = $1", name):
                # PostgreSQL 15 row filters: the tenant's rows only, copied and streamed.
                where = f"WHERE (tenant_id = {_quote_literal(str(info.tenant_id))}::uuid)"
                members = ", ".join(f"{quote_ident(t)} {where}" for t in tables)
                await src.execute(f"CREATE PUBLICATION {quote_ident(name)} FOR TABLE {members}")
            # The slot is made on the source before the subscription (create_slot = false):
            # a subscription on the same server as its publisher cannot make its own
            # slot, and the publication must exist before the slot's starting point.
            if not await _slot_exists(src, name):
                await src.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", name)
            if not await dst.fetchval("SELECT 1 FROM pg_subscription WHERE subname = $1", name):
                conninfo = _quote_literal(asyncpg_dsn(source.admin_dsn))
                # synchronous_commit on: the target reports what it applied as flushed
                # at once, so the wait for the fence's position (writes frozen) is not
                # a wait for its WAL writer (the default, off, made it ~0.6 s).
                await dst.execute(
                    f"CREATE SUBSCRIPTION {quote_ident(name)} CONNECTION {conninfo} "
                    f"PUBLICATION {quote_ident(name)} WITH (create_slot = false, "
                    f"slot_name = {_quote_literal(name)}, copy_data = true, "
                    "synchronous_commit = 'on')"
                )
        await self._record(info.id, state=MoveState.COPYING.value)

    # copying → catching_up
    async def _wait_for_copy(self, info: MoveInfo) -> None:
        """Until every table's initial copy is done (pg_subscription_rel 'r'), with rows
        copied/total per table recorded as it goes. A table whose sync cannot finish
        (``_orphaned_syncs``) starts the copy over."""
        source, target = await self._shards(info)
        name = replication_name(info.id)
        deadline = time.monotonic() + self.options.copy_timeout
        last_report = 0.0
        orphaned_since: dict[int, float] = {}
        async with _connect(source) as src, _connect(target) as dst:
            tables = await _moved_tables(src)
            while True:
                states = await dst.fetch(
                    "SELECT r.srsubstate::text AS s FROM pg_subscription_rel r "
                    "JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1",
                    name,
                )
                if not states:
                    raise _Abort("the move's subscription is gone from the target")
                ready = len(states) == len(tables) and all(r["s"] == "r" for r in states)
                if ready or time.monotonic() - last_report > 0.5:
                    await self._record_copy_progress(info, src, dst, tables)
                    await self._check_cancelled(info.id)
                    last_report = time.monotonic()
                    orphaned = await _orphaned_syncs(src, dst, name)
                    orphaned_since = {t: orphaned_since.get(t, last_report) for t in orphaned}
                    if any(last_report - t >= 2.0 for t in orphaned_since.values()):
                        break
                if ready:
                    break
                if time.monotonic() > deadline:
                    raise _Abort(f"the initial copy did not finish in {self.options.copy_timeout}s")
                await asyncio.sleep(max(self.options.poll_interval, 0.1))
        if not ready:
            await self._restart_copy(info, source, target)
            return
        await self._record(info.id, state=MoveState.CATCHING_UP.value)

    async def _restart_copy(self, info: MoveInfo, source: _Shard, target: _Shard) -> None:
        """copying → planned: the replication dropped and the target's copy deleted, to
        be made again by the next step. The target serves nothing of the tenant yet."""
        restarts = int(info.progress.get("copy_restarts", 0)) + 1
        if restarts > 3:
            raise _Abort("the initial copy lost a table sync's slot on the source 3 times")
        log.warning(
            "move %s: a table sync lost its slot on shard %s; the copy starts over",
            info.id,
            source.id,
        )
        await self._drop_replication(source, target, replication_name(info.id))
        async with _connect(target) as dst:
            await self._delete_tenant(dst, info.tenant_id)
        progress = {**info.progress, "copy_restarts": restarts}
        progress.pop("tables", None)
        await self._record(info.id, state=MoveState.PLANNED.value, progress=progress)

    async def _record_copy_progress(
        self,
        info: MoveInfo,
        src: asyncpg.Connection,
        dst: asyncpg.Connection,
        tables: Sequence[str],
    ) -> None:
        total, copied = await asyncio.gather(
            verify.counts(src, tables, info.tenant_id), verify.counts(dst, tables, info.tenant_id)
        )
        progress = dict(info.progress)
        progress["tables"] = {t: {"copied": copied[t], "total": total[t]} for t in tables}
        await self._record(info.id, progress=progress)

    # catching_up → verifying
    async def _catch_up(self, info: MoveInfo) -> None:
        """Until the target has applied everything the source had written when this
        step began (writes go on meanwhile)."""
        source, target = await self._shards(info)
        async with _connect(source) as src, _connect(target) as dst:
            lsn = await src.fetchval("SELECT pg_current_wal_lsn()::text")
            lag = await self._wait_applied(
                info, src, dst, lsn, self.options.catch_up_timeout, "catch-up"
            )
            # The copy filled the target's tables behind autovacuum's back: statistics
            # now, or the tenant's first queries there are planned for empty tables.
            for table in await _moved_tables(dst):
                await dst.execute(f"ANALYZE {quote_ident(table)}")
        live = await self._compare_live(info, source, target)
        await self._record(
            info.id,
            state=MoveState.VERIFYING.value,
            lag_bytes=lag,
            progress={**info.progress, "live_check": live},
        )

    async def _compare_live(self, info: MoveInfo, source: _Shard, target: _Shard) -> dict[str, Any]:
        """The live part of the verification (``sharding.verify``): a slot marks the
        point first, then every row is compared while writes go on; the keys that
        differ are recorded for the part under the fence."""
        slot = verify_slot_name(info.id)
        async with _connect(source) as src:
            if await _slot_exists(src, slot):
                # From an interrupted attempt: its point is older than this comparison.
                await src.execute("SELECT pg_drop_replication_slot($1)", slot)
            point = await src.fetchval(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", slot
            )
        started = time.monotonic()
        async with _connect(source) as src, _connect(target) as dst:
            marker = await verify.xid_marker(dst)
            keys = await verify.primary_keys(src, await _moved_tables(src))
            differing, compared = await verify.live_differences(src, dst, keys, info.tenant_id)
        return {
            "slot_lsn": point,
            "target_xid": marker,
            "rows": compared,
            "ms": round((time.monotonic() - started) * 1000),
            # None: too many to recheck under the fence, which compares everything.
            "differing": None
            if differing is None
            else {t: [list(k) for k in found] for t, found in differing.items()},
        }

    # verifying → freezing
    async def _fence_and_verify(self, info: MoveInfo) -> None:
        """Fence the source, wait until the target has applied everything up to the
        fence, then compare counts and hashes of every table on both sides.

        The comparison needs both sides still; under live writes a comparison before
        the fence could not tell lag from a difference. So the write freeze starts
        here, and any difference rolls the move back, which unfences the source."""
        source, target = await self._shards(info)
        # Both shards are reached before the fence: a target that is down does not
        # freeze the tenant's writes.
        async with _connect(source) as src, _connect(target) as dst:
            # The freeze is measured from before the fence waits for in-flight writers
            # (new writers queue behind it from then on), and from the first attempt only.
            await self._record(info.id, fenced_at=func.coalesce(TenantMove.fenced_at, func.now()))
            started = time.monotonic()
            async with src.transaction():
                await src.execute(
                    f"SET LOCAL lock_timeout = '{int(self.options.fence_lock_timeout * 1000)}ms'"
                )
                try:
                    # Takes the residency row FOR UPDATE: waits for the writers that hold
                    # it FOR SHARE (every write transaction), and refuses new ones.
                    fenced = await src.fetchval(
                        "UPDATE tenant_residency SET writable = false, updated_at = now() "
                        "WHERE tenant_id = $1 AND epoch = $2 RETURNING 1",
                        info.tenant_id,
                        info.epoch,
                    )
                except asyncpg.LockNotAvailableError as exc:
                    raise _Abort("the fence waited too long for in-flight writers") from exc
                if fenced:
                    for statement in self._on_fence:
                        await src.execute(statement, info.tenant_id)
            if not fenced:
                raise _Abort("the tenant's residency on the source changed during the move")
            fence_lsn = await src.fetchval("SELECT pg_current_wal_lsn()::text")
            fenced = time.monotonic()
            await self._wait_applied(
                info, src, dst, fence_lsn, self.options.fenced_catch_up_timeout, "fenced catch-up"
            )
            applied = time.monotonic()
            tables = await _moved_tables(src)
            fenced_check = await self._compare_fenced(info, src, dst, tables, fence_lsn)
        here, there = fenced_check.here, fenced_check.there
        differing = sorted(t for t in tables if here[t] != there[t])
        progress = dict(info.progress)
        progress["verified"] = {
            t: {"rows": here[t][0], "target_rows": there[t][0], "matches": here[t] == there[t]}
            for t in tables
        }
        progress["verify_mode"] = fenced_check.mode
        progress["rechecked_rows"] = fenced_check.rechecked
        progress["verify_parts_ms"] = fenced_check.parts_ms
        # The copy's final figures: every row of the tenant is on both sides.
        progress["tables"] = {t: {"copied": there[t][0], "total": here[t][0]} for t in tables}
        # Where the freeze's time goes: waiting for in-flight writers, for the target to
        # apply up to the fence, and comparing.
        progress["fence_ms"] = round((fenced - started) * 1000)
        progress["fenced_catch_up_ms"] = round((applied - fenced) * 1000)
        progress["verify_ms"] = round((time.monotonic() - applied) * 1000)
        await self._record(info.id, progress=progress)
        if differing:
            raise _Abort(f"verification failed: {', '.join(differing)} differ between the shards")
        await self._record(info.id, state=MoveState.FREEZING.value, lag_bytes=0)

    async def _compare_fenced(
        self,
        info: MoveInfo,
        src: asyncpg.Connection,
        dst: asyncpg.Connection,
        tables: Sequence[str],
        fence_lsn: str,
    ) -> _Fenced:
        """The part of the verification under the fence: per table on each side, the
        row count and what is compared (a hash of the rows that differed live or
        changed since its point, or of every row)."""
        live = info.progress.get("live_check") or {}
        slot = verify_slot_name(info.id)
        parts: dict[str, int] = {}
        clock = time.monotonic()

        def lap(part: str) -> None:
            nonlocal clock
            now = time.monotonic()
            parts[part] = round((now - clock) * 1000)
            clock = now

        delta = (
            live.get("differing") is not None
            and "target_xid" in live
            and await _slot_exists(src, slot)
        )
        if delta:
            keys = await verify.primary_keys(src, tables)

            async def written_on_target() -> dict[str, set[verify.Key]]:
                return {
                    t: await verify.rows_written_since(
                        dst, keys[t], info.tenant_id, live["target_xid"]
                    )
                    for t in tables
                }

            try:
                changed, written = await asyncio.gather(
                    verify.changed_keys(src, slot, replication_name(info.id), fence_lsn),
                    written_on_target(),
                )
            except verify.TruncatedError:
                delta = False
            lap("changes")
        if not delta:
            here, there = await asyncio.gather(
                verify.checksums(src, tables, info.tenant_id),
                verify.checksums(dst, tables, info.tenant_id),
            )
            lap("full")
            return _Fenced(here, there, "full", sum(n for n, _ in here.values()), parts)
        counted_here, counted_there = await asyncio.gather(
            verify.counts(src, tables, info.tenant_id), verify.counts(dst, tables, info.tenant_id)
        )
        lap("counts")
        here, there = {}, {}
        rechecked = 0
        for table in tables:
            wanted = (
                {tuple(k) for k in live["differing"].get(table, [])}
                | changed.get(table, set())
                | written[table]
            )
            rechecked += len(wanted)
            wrong = await verify.differing_rows(src, dst, keys[table], info.tenant_id, wanted)
            # Equal unless the counts or some rows differ (the keys of those, as text).
            here[table] = (counted_here[table], "")
            there[table] = (counted_there[table], ",".join("/".join(k) for k in wrong))
        lap("recheck")
        return _Fenced(here, there, "delta", rechecked, parts)

    # freezing → switched
    async def _switch(self, info: MoveInfo) -> None:
        """The target's residency becomes writable at epoch + 1, then the directory
        names the target at epoch + 1 (in the same control-plane transaction as the
        state ``switched``): from here on the move can only go forward."""
        source, target = await self._shards(info)
        new_epoch = info.epoch + 1
        async with _connect(source) as src, _connect(target) as dst:
            residency = await src.fetchrow(
                "SELECT epoch, writable FROM tenant_residency WHERE tenant_id = $1", info.tenant_id
            )
            if residency is None or residency["epoch"] != info.epoch:
                raise _Abort("the tenant's residency on the source changed during the move")
            if residency["writable"]:
                # Unfenced since it was verified (by hand?): writes may have happened, so
                # verify again; the target, if an earlier attempt of this step made it
                # writable, is not any more.
                await dst.execute(
                    "UPDATE tenant_residency SET epoch = $2, writable = false WHERE tenant_id = $1",
                    info.tenant_id,
                    info.epoch,
                )
                await self._record(info.id, state=MoveState.VERIFYING.value)
                return
            lsn = await src.fetchval("SELECT pg_current_wal_lsn()::text")
            await self._wait_applied(
                info, src, dst, lsn, self.options.fenced_catch_up_timeout, "fenced catch-up"
            )
            await dst.execute(
                "UPDATE tenant_residency SET epoch = $2, writable = true, updated_at = now() "
                "WHERE tenant_id = $1",
                info.tenant_id,
                new_epoch,
            )
        async with self._control.begin() as conn:
            # Under the move's row lock, which cancel_move takes too: a cancel either
            # lands before the flip (and is obeyed) or finds the move switched.
            if await conn.scalar(
                select(TenantMove.rollback_to).where(TenantMove.id == info.id).with_for_update()
            ):
                raise _Cancelled
            flipped = await conn.execute(
                update(DirectoryEntry)
                .where(
                    DirectoryEntry.tenant_id == info.tenant_id,
                    DirectoryEntry.shard_id == info.source_shard_id,
                    DirectoryEntry.epoch == info.epoch,
                )
                .values(shard_id=info.target_shard_id, epoch=new_epoch, updated_at=func.now())
            )
            if flipped.rowcount != 1 and not await _directory_is(conn, info, target.id, new_epoch):
                raise _Abort("the tenant's directory entry changed during the move")
            # The tenant's region is where its rows are: it changes with the directory.
            await conn.execute(
                update(Tenant)
                .where(Tenant.id == info.tenant_id)
                .values(
                    region=select(Shard.region).where(Shard.id == target.id).scalar_subquery(),
                    updated_at=func.now(),
                )
            )
            fenced_at = await conn.scalar(
                select(TenantMove.fenced_at).where(TenantMove.id == info.id)
            )
            freeze_ms = await conn.scalar(
                select(func.round(func.extract("epoch", func.clock_timestamp() - fenced_at) * 1000))
            )
            await conn.execute(
                update(TenantMove)
                .where(TenantMove.id == info.id)
                .values(
                    state=MoveState.SWITCHED.value,
                    freeze_ms=int(freeze_ms) if freeze_ms is not None else None,
                    updated_at=func.now(),
                )
            )
        await self._retire_residency(source, info)
        await self._announce(info.tenant_id)

    # switched → cleaning
    async def _retire_source(self, info: MoveInfo) -> None:
        """Again what the switch did after the directory flipped, in case the process
        died in between, then on to the cleanup."""
        source, _ = await self._shards(info)
        await self._retire_residency(source, info)
        await self._announce(info.tenant_id)
        await self._record(info.id, state=MoveState.CLEANING.value)

    async def _retire_residency(self, source: _Shard, info: MoveInfo) -> None:
        """The source's residency moves to the new epoch, still read-only: an instance
        with the old entry is refused there as stale (MR001) and re-routes, instead of
        being told the tenant is read-only (MR002) or reading rows the cleanup is
        deleting."""
        async with _connect(source) as src:
            await src.execute(
                "UPDATE tenant_residency SET epoch = $2, writable = false, updated_at = now() "
                "WHERE tenant_id = $1",
                info.tenant_id,
                info.epoch + 1,
            )

    # cleaning → done
    async def _clean_up(self, info: MoveInfo) -> None:
        """Drop the replication (first: the deletes below must not reach the target),
        then delete the tenant's rows from the source in batches, residency last."""
        source, target = await self._shards(info)
        async with self._control.connect() as conn:
            switched = await _directory_is(conn, info, target.id, info.epoch + 1)
        if not switched:
            # Never delete what may be the only copy.
            raise _Abort("the directory does not name the target; the source is kept")
        name = replication_name(info.id)
        await self._drop_replication(source, target, name)
        async with _connect(source) as src:
            deleted = await self._delete_tenant(src, info.tenant_id)
        progress = dict(info.progress)
        progress["deleted_from_source"] = deleted
        await self._record(
            info.id, state=MoveState.DONE.value, progress=progress, finished_at=func.now()
        )

    # rollback (any state before switched)
    async def _roll_back(self, info: MoveInfo) -> None:
        """Undo a move that has not switched: the target stops being able to serve
        first (if the switch had begun), then the source is unfenced, then the
        replication is dropped and the target's copy deleted. Each part is
        idempotent, so a rollback is resumed like any other step.

        A target that cannot be reached does not keep the source fenced: the source is
        unfenced and its end of the replication dropped (a slot left there would keep
        its WAL), then the rollback stalls (MoveStalledError) until the target is back
        to drop the subscription and the copy."""
        assert info.rollback_to is not None
        source, target = await self._shards(info)
        async with self._control.connect() as conn:
            past_switch = await _directory_is(conn, info, target.id, info.epoch + 1)
        if past_switch:
            # The directory names the target (it flips in the same transaction that
            # records ``switched``, so only by hand): forward only.
            await self._record(info.id, rollback_to=None, state=MoveState.SWITCHED.value)
            return
        name = replication_name(info.id)
        lost: BaseException | None = None  # why the target could not be reached
        if info.state is MoveState.FREEZING:
            # The switch may have made the target writable already: not any more, before
            # the source is. Earlier the target's row was never writable.
            try:
                async with _connect(target) as dst:
                    await dst.execute(
                        "DELETE FROM tenant_residency WHERE tenant_id = $1", info.tenant_id
                    )
            except _UNREACHABLE as exc:
                # The directory never named the target (checked above), so no request
                # reaches a row the switch made writable there: unfence all the same.
                lost = exc
        async with _connect(source) as src:
            await src.execute(
                "UPDATE tenant_residency SET writable = true, updated_at = now() "
                "WHERE tenant_id = $1 AND epoch = $2 AND NOT writable",
                info.tenant_id,
                info.epoch,
            )
        sub_oid = None
        if lost is None:
            try:
                sub_oid = await self._drop_subscription(target, name)
            except _UNREACHABLE as exc:
                lost = exc
        await self._drop_publication(source, name, sub_oid, target_lost=lost is not None)
        if lost is None:
            try:
                async with _connect(target) as dst:
                    await self._delete_tenant(dst, info.tenant_id)
            except _UNREACHABLE as exc:
                lost = exc
        if lost is not None:
            await self._stall(
                info,
                f"{_unreachable_note([target.id], lost)}; the source serves the tenant, "
                "and the subscription and the tenant's copy on the target are dropped "
                "once it is back: the rollback will be retried",
            )
        await self._record(
            info.id,
            state=info.rollback_to.value,
            finished_at=func.now(),
            error=_rollback_reason(info),
        )

    # -- pieces ------------------------------------------------------------------------

    async def _wait_applied(
        self,
        info: MoveInfo,
        src: asyncpg.Connection,
        dst: asyncpg.Connection,
        lsn: str,
        within: float,
        what: str,
    ) -> int:
        """Until the subscription has confirmed (applied and flushed) ``lsn`` of the
        source; records the lag in bytes as it goes and returns the last one."""
        name = replication_name(info.id)
        deadline = time.monotonic() + within
        last_report = 0.0
        while True:
            behind = await src.fetchval(
                "SELECT pg_wal_lsn_diff($1::text::pg_lsn, confirmed_flush_lsn) "
                "FROM pg_replication_slots WHERE slot_name = $2",
                lsn,
                name,
            )
            if behind is None:
                raise _Abort("the move's replication slot is gone from the source")
            lag = max(int(behind), 0)
            if lag == 0:
                return 0
            if time.monotonic() - last_report > 0.5:
                await self._record(info.id, lag_bytes=lag)
                await self._check_cancelled(info.id)
                # A target that is gone never catches up: better known now than at the
                # deadline, which would roll the move back.
                await dst.fetchval("SELECT 1", timeout=_PROBE_TIMEOUT)
                last_report = time.monotonic()
            if time.monotonic() > deadline:
                raise _Abort(f"the {what} did not finish in {within}s ({lag} bytes behind)")
            await asyncio.sleep(self.options.poll_interval)

    async def _drop_replication(self, source: _Shard, target: _Shard, name: str) -> None:
        sub_oid = await self._drop_subscription(target, name)
        await self._drop_publication(source, name, sub_oid, target_lost=False)

    async def _drop_subscription(self, target: _Shard, name: str) -> int | None:
        """Drop the move's subscription on the target; returns its oid (None: none)."""
        async with _connect(target) as dst:
            sub_oid: int | None = await dst.fetchval(
                "SELECT oid FROM pg_subscription WHERE subname = $1", name
            )
            if sub_oid is not None:
                # Detached from its slot first, so dropping it never needs the source;
                # the slot is dropped on the source itself (_drop_publication).
                sub = quote_ident(name)
                await dst.execute(f"ALTER SUBSCRIPTION {sub} DISABLE")
                await dst.execute(f"ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)")
                await dst.execute(f"DROP SUBSCRIPTION {sub}")
        return sub_oid

    async def _drop_publication(
        self, source: _Shard, name: str, sub_oid: int | None, *, target_lost: bool
    ) -> None:
        """Drop the move's slot (and the table syncs' slots of subscription ``sub_oid``,
        when known) and publication on the source. ``target_lost``: the target cannot be
        reached, so its walsender on the source is ended instead of waited for, and a
        slot still held after a short while is left to the resumed rollback."""
        async with _connect(source) as src:
            deadline = time.monotonic() + (5 if target_lost else 30)
            while await _slot_exists(src, name):
                try:
                    await src.execute("SELECT pg_drop_replication_slot($1)", name)
                except asyncpg.ObjectInUseError:
                    # The disabled subscription's walsender has not exited yet, or the
                    # lost target's has not noticed (it would wait for wal_sender_timeout).
                    if time.monotonic() > deadline:
                        if target_lost:
                            break  # the publication goes all the same
                        raise
                    if target_lost:
                        await src.execute(
                            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                            "WHERE slot_name = $1 AND active_pid IS NOT NULL",
                            name,
                        )
                    await asyncio.sleep(0.1)
                except asyncpg.UndefinedObjectError:
                    break
            if sub_oid is not None:
                # Slots of the initial copy's table syncs (pg_<subscription>_sync_...),
                # left behind when a sync was cut off.
                for sync in await src.fetch(
                    "SELECT slot_name FROM pg_replication_slots "
                    "WHERE starts_with(slot_name::text, $1) AND NOT active",
                    f"pg_{sub_oid}_sync_",
                ):
                    await src.execute("SELECT pg_drop_replication_slot($1)", sync["slot_name"])
            # The verification's slot (never active: it is only peeked).
            if await _slot_exists(src, verify_slot_name_of(name)):
                await src.execute("SELECT pg_drop_replication_slot($1)", verify_slot_name_of(name))
            await src.execute(f"DROP PUBLICATION IF EXISTS {quote_ident(name)}")

    async def _delete_tenant(self, conn: asyncpg.Connection, tenant_id: UUID) -> dict[str, int]:
        """Every row of the tenant on ``conn``'s shard, in batches; the rows deleted per
        table (``sharding.tenant_rows``, as a tenant archive's restore deletes them)."""
        return await delete_tenant_rows(conn, tenant_id, batch=self.options.delete_batch)

    async def _check_shards(self, tenant_id: UUID, source: _Shard, target: _Shard) -> None:
        for shard in (source, target):
            if shard.engine != ShardEngine.POSTGRES.value:
                raise MoveRefusedError(
                    f"shard {shard.id} runs {shard.engine}: moves between shards run on "
                    "plain PostgreSQL shards"
                )
        try:
            await self._compare_shards(tenant_id, source, target)
        except _UNREACHABLE as exc:
            down = await _unreachable(source, target)
            raise MoveRefusedError(
                f"{_unreachable_note(down, exc)}: plan the move once it is back"
            ) from exc

    async def _compare_shards(self, tenant_id: UUID, source: _Shard, target: _Shard) -> None:
        async with _connect(source) as src, _connect(target) as dst:
            wal_level = await src.fetchval("SHOW wal_level")
            if wal_level != "logical":
                raise MoveRefusedError(
                    f"shard {source.id} has wal_level = {wal_level}; moving a tenant off it "
                    "needs wal_level = logical (a server restart)"
                )
            for shard, conn in ((source, src), (target, dst)):
                if not await conn.fetchval(
                    "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                ):
                    raise MoveRefusedError(
                        f"shard {shard.id}'s admin DSN is not a superuser, which a move needs"
                    )
            versions = [
                await c.fetchval("SELECT string_agg(version_num, ',') FROM alembic_version")
                for c in (src, dst)
            ]
            if versions[0] != versions[1]:
                raise MoveRefusedError(
                    f"shards {source.id} and {target.id} are at different schema revisions "
                    f"({versions[0]} and {versions[1]}): migrate them first"
                )
            tables = await _moved_tables(dst)
            present = [
                t
                for t, n in (await verify.counts(dst, [*tables, RESIDENCY], tenant_id)).items()
                if n
            ]
            if present:
                raise MoveRefusedError(
                    f"shard {target.id} holds rows of tenant {tenant_id} already "
                    f"({', '.join(sorted(present))})"
                )

    async def _shard(self, conn: AsyncConnection, shard_id: str) -> _Shard:
        row = (
            await conn.execute(
                select(Shard.id, Shard.admin_dsn, Shard.engine).where(Shard.id == shard_id)
            )
        ).one_or_none()
        if row is None:
            raise UnknownShardError(shard_id)
        return _Shard(row.id, row.admin_dsn, row.engine)

    async def _shards(self, info: MoveInfo) -> tuple[_Shard, _Shard]:
        async with self._control.connect() as conn:
            return (
                await self._shard(conn, info.source_shard_id),
                await self._shard(conn, info.target_shard_id),
            )

    async def _check_cancelled(self, move_id: UUID) -> None:
        """Raise _Cancelled when a rollback was asked for since the step began, so a
        long wait does not hold a cancel back."""
        async with self._control.connect() as conn:
            wanted = await conn.scalar(
                select(TenantMove.rollback_to).where(TenantMove.id == move_id)
            )
        if wanted is not None:
            raise _Cancelled

    async def _record(self, move_id: UUID, **values: Any) -> None:
        async with self._control.begin() as conn:
            await conn.execute(
                update(TenantMove)
                .where(TenantMove.id == move_id)
                .values(**values, updated_at=func.now())
            )

    async def _announce(self, tenant_id: UUID) -> None:
        if self._invalidate is None:
            return
        try:
            await self._invalidate(tenant_id)
        except Exception:
            # Instances still holding the old entry are refused by the source's
            # residency and re-route; a lost invalidation costs them one retry.
            log.warning("directory invalidation for tenant %s failed", tenant_id, exc_info=True)


@dataclass(frozen=True, slots=True)
class _Fenced:
    """What the verification under the fence found, per table on each side: the row
    count and a digest that matches when the table's rows do."""

    here: dict[str, tuple[int, str]]
    there: dict[str, tuple[int, str]]
    mode: str  # delta: counts and the rows that changed; full: every row
    rechecked: int  # rows compared by key (delta) or hashed (full)
    parts_ms: dict[str, int]


class _Abort(Exception):
    """A step found the move cannot go on: it is rolled back, ending ``failed``."""


class _Cancelled(Exception):
    """A rollback was asked for (``cancel_move``) while a step was waiting."""


def _rollback_reason(info: MoveInfo) -> str:
    """Why the move is rolled back, also once a stall has replaced its error."""
    assert info.rollback_to is not None
    return str(info.progress.get("rollback_reason") or info.error or info.rollback_to.value)


async def _unreachable(*shards: _Shard) -> list[str]:
    """The ids of ``shards`` that do not answer now."""

    async def answers(shard: _Shard) -> bool:
        try:
            async with _connect(shard, connect_timeout=_PROBE_TIMEOUT) as conn:
                await conn.fetchval("SELECT 1", timeout=_PROBE_TIMEOUT)
        except _UNREACHABLE:
            return False
        return True

    found = await asyncio.gather(*(answers(s) for s in shards))
    return [s.id for s, ok in zip(shards, found, strict=True) if not ok]


def _unreachable_note(down: Sequence[str], exc: BaseException) -> str:
    cause = str(exc) or type(exc).__name__
    if not down:
        # It answers again already: a restart, or a connection cut mid-way.
        return f"lost a shard connection ({cause})"
    if len(down) == 1:
        return f"shard {down[0]} is unreachable ({cause})"
    return f"shards {' and '.join(down)} are unreachable ({cause})"


async def _fenced(source: _Shard, info: MoveInfo) -> bool:
    """Whether the source has the tenant's writes frozen for the move: its residency at
    the move's epoch, not writable."""
    async with _connect(source, connect_timeout=_PROBE_TIMEOUT) as src:
        writable = await src.fetchval(
            "SELECT writable FROM tenant_residency WHERE tenant_id = $1 AND epoch = $2",
            info.tenant_id,
            info.epoch,
            timeout=_PROBE_TIMEOUT,
        )
    return writable is False


async def _directory_is(conn: AsyncConnection, info: MoveInfo, shard_id: str, epoch: int) -> bool:
    found = await conn.scalar(
        select(func.count()).where(
            DirectoryEntry.tenant_id == info.tenant_id,
            DirectoryEntry.shard_id == shard_id,
            DirectoryEntry.epoch == epoch,
        )
    )
    return bool(found)


@asynccontextmanager
async def _connect(
    shard: _Shard, *, connect_timeout: float = 10.0
) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(
        asyncpg_dsn(shard.admin_dsn), timeout=connect_timeout, server_settings=_SESSION
    )
    try:
        yield conn
    except BaseException:
        # Its server may be gone: a polite close could wait for it.
        conn.terminate()
        raise
    await conn.close()


async def _orphaned_syncs(src: asyncpg.Connection, dst: asyncpg.Connection, name: str) -> set[int]:
    """Tables of the subscription ``name`` whose sync has copied them (state 'f') but
    whose slot is gone from the source: they never finish. PostgreSQL drops a sync's
    slot on the source before it commits the table's next state; a source (or target)
    that crashes in between leaves the table so.

    The slots are read before the states: a table seen 'f' was 'f' or earlier when its
    slot was looked for. A sync between dropping its slot and committing, or between
    making its slot and copying, shows the same for a moment, so callers wait for it to
    last."""
    slots = {
        r["slot_name"]
        for r in await src.fetch(
            "SELECT slot_name::text FROM pg_replication_slots "
            "WHERE slot_name::text LIKE 'pg\\_%\\_sync\\_%'"
        )
    }
    copied = await dst.fetch(
        "SELECT r.srsubid::int8 AS sub, r.srrelid::int8 AS rel FROM pg_subscription_rel r "
        "JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1 AND r.srsubstate = 'f'",
        name,
    )
    return {
        r["rel"]
        for r in copied
        if not any(s.startswith(f"pg_{r['sub']}_sync_{r['rel']}_") for s in slots)
    }


async def _slot_exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(
        await conn.fetchval("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", name)
    )


async def _moved_tables(conn: asyncpg.Connection) -> list[str]:
    """The shard's tables that hold tenant rows, but the residency row (each shard's
    own record, written by the mover)."""
    return sorted(t for t in await tenant_tables(conn) if t != RESIDENCY)
