"""Tenant moves as platform admins see them: planned here (a target shard, or the
least-loaded active shard of a region), driven by the runtime's move driver
(``sharding.driver``), read and cancelled. The mechanism is ``sharding.mover``; this
module turns its errors into problems and its records into ``MoveRead`` bodies.

Also where drains and rebalances find their targets: one choice of shard for a region
(``sharding.placement.choose_shard``, as onboarding), one runner of several moves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from meridian.admin.schemas import MoveCreate
from meridian.admin.service import AdminDeps
from meridian.crud.idempotency import request_fingerprint, validate_key
from meridian.errors import (
    NOT_FOUND,
    Conflict,
    IdempotencyKeyReused,
    NotFound,
    invalid_field,
)
from sharding.balance import PlannedMove
from sharding.engines import ShardInfo
from sharding.errors import UnknownShardError
from sharding.models import MoveState
from sharding.mover import (
    MoveConflictError,
    MoveError,
    MoveInfo,
    MoveNotFoundError,
    MoveRefusedError,
)
from sharding.placement import PlacementError, choose_shard
from tenancy.context import TenantStatus


@contextmanager
def _as_problems() -> Iterator[None]:
    """The mover's refusals as the API's problems."""
    try:
        yield
    except MoveNotFoundError as exc:
        raise NotFound(f"{str(exc).capitalize()}.") from exc
    except UnknownShardError as exc:
        raise NotFound(f"No shard {exc.shard_id!r}.") from exc
    except (MoveConflictError, MoveRefusedError) as exc:
        raise Conflict(f"{str(exc)[:1].upper()}{str(exc)[1:]}.") from exc


def move_body(info: MoveInfo) -> dict[str, Any]:
    """A move as ``MoveRead`` shows it."""
    progress = info.progress
    tables = progress.get("tables") or {}
    verified = progress.get("verified")
    timings = None
    if "fence_ms" in progress:
        timings = {
            k: progress[k] for k in ("fence_ms", "fenced_catch_up_ms", "verify_ms") if k in progress
        }
    return {
        "id": info.id,
        "tenant_id": info.tenant_id,
        "source_shard_id": info.source_shard_id,
        "target_shard_id": info.target_shard_id,
        "state": info.state,
        "rolling_back_to": info.rollback_to,
        "rows_copied": sum(int(t["copied"]) for t in tables.values()),
        "rows_total": sum(int(t["total"]) for t in tables.values()),
        "tables": tables,
        "lag_bytes": info.lag_bytes,
        "verified": None
        if verified is None
        else {t: {"rows": v["rows"], "matches": v["matches"]} for t, v in verified.items()},
        "timings": timings,
        "fenced_at": info.fenced_at,
        "freeze_ms": info.freeze_ms,
        "deleted_from_source": progress.get("deleted_from_source"),
        "error": info.error,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "finished_at": info.finished_at,
    }


def region_target(
    shards: Sequence[ShardInfo], counts: dict[str, int], region: str, *, field: str = "region"
) -> ShardInfo:
    """The shard a tenant moving to ``region`` goes to: the least-loaded active shared
    shard there (onboarding's choice); 422 when the region has none."""
    if not any(s.region == region for s in shards):
        raise invalid_field(field, f"no shard in region {region!r}", NOT_FOUND)
    try:
        return choose_shard(shards, counts, region)
    except PlacementError as exc:
        raise invalid_field(field, str(exc)) from exc


class MoveService:
    async def start(
        self,
        deps: AdminDeps,
        tenant_id: UUID,
        body: MoveCreate,
        idempotency_key: str | None,
        *,
        drive: bool = True,
    ) -> tuple[dict[str, Any], bool]:
        """Plan the move and (``drive``) start driving it in the background; returns
        (the move, planned_now). A retry with the same Idempotency-Key answers with
        the move the first request planned."""
        key = validate_key(idempotency_key) if idempotency_key else None
        fingerprint = request_fingerprint(
            "POST", f"/admin/v1/tenants/{tenant_id}/moves", body.model_dump(mode="json")
        )
        mover = deps.moves.mover
        if key is not None and (earlier := await self._replayed(deps, tenant_id, key, fingerprint)):
            return earlier, False
        ctx = await deps.directory.load(tenant_id)
        if ctx is None or ctx.status is TenantStatus.DELETED:
            raise NotFound(f"No tenant with id {tenant_id}.")
        target = body.target_shard_id
        if target is None:
            assert body.region is not None
            if body.region == ctx.region:
                raise Conflict(
                    f"Tenant {tenant_id} is in region {body.region!r} already; to move it "
                    "to another shard of the region, name the shard (target_shard_id)."
                )
            shards = await deps.reload_topology()
            target = region_target(shards, await deps.tenant_counts(), body.region).id
        try:
            with _as_problems():
                info = await mover.plan_move(
                    tenant_id, target, creation_key=key, creation_fingerprint=fingerprint
                )
        except Conflict:
            # The same request racing itself: the other one planned it.
            if key is not None and (
                earlier := await self._replayed(deps, tenant_id, key, fingerprint)
            ):
                return earlier, False
            raise
        if drive:
            deps.moves.drive(info.id)
        return move_body(info), True

    async def _replayed(
        self, deps: AdminDeps, tenant_id: UUID, key: str, fingerprint: bytes
    ) -> dict[str, Any] | None:
        found = await deps.moves.mover.planned_with(tenant_id, key)
        if found is None:
            return None
        info, planned_with = found
        if planned_with != fingerprint:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used for a different request; use a new key."
            )
        return move_body(info)

    async def get(self, deps: AdminDeps, move_id: UUID) -> dict[str, Any]:
        with _as_problems():
            return move_body(await deps.moves.mover.get_move(move_id))

    async def list_moves(
        self,
        deps: AdminDeps,
        *,
        tenant_id: UUID | None,
        state: MoveState | None,
        limit: int,
        before: UUID | None,
    ) -> tuple[list[dict[str, Any]], UUID | None]:
        """A page of moves, newest first, and the cursor of the next page (None: last)."""
        found = await deps.moves.mover.list_moves(
            tenant_id=tenant_id, state=state, limit=limit + 1, before=before
        )
        page = found[:limit]
        return [move_body(m) for m in page], page[-1].id if len(found) > limit else None

    async def cancel(self, deps: AdminDeps, move_id: UUID) -> dict[str, Any]:
        """Asks for the rollback and has it driven in the background (the answer comes
        at once; the move ends ``cancelled``). 409 once the move has switched."""
        with _as_problems():
            info = await deps.moves.mover.request_cancel(move_id)
        deps.moves.drive(move_id)
        return move_body(info)

    async def resume(self, deps: AdminDeps, move_id: UUID) -> dict[str, Any]:
        """Drive an unfinished move in the background (a no-op if it is driven here
        already; another process driving it keeps it)."""
        with _as_problems():
            info = await deps.moves.mover.get_move(move_id)
        if info.finished:
            raise Conflict(f"Move {move_id} is {info.state.value} already.")
        deps.moves.drive(move_id)
        return move_body(info)


moves_admin = MoveService()


# -- several moves: drains and rebalances ----------------------------------------------


async def run_moves(
    deps: AdminDeps,
    planned: Sequence[PlannedMove],
    *,
    parallel: int,
    on_done: Callable[[PlannedMove, MoveInfo | Exception], Awaitable[None] | None] | None = None,
) -> list[MoveInfo | Exception]:
    """Plan and drive ``planned`` moves in this process, ``parallel`` at a time; a move
    that cannot be planned or stops is reported (its exception) and the others go on."""
    gate = asyncio.Semaphore(parallel)
    mover = deps.moves.mover

    async def one(p: PlannedMove) -> MoveInfo | Exception:
        async with gate:
            try:
                info = await mover.plan_move(p.tenant_id, p.target_shard_id)
                result: MoveInfo | Exception = await mover.run_move(info.id)
            except (MoveError, UnknownShardError) as exc:
                result = exc
            if on_done is not None:
                maybe = on_done(p, result)
                if maybe is not None:
                    await maybe
            return result

    return list(await asyncio.gather(*(one(p) for p in planned)))
