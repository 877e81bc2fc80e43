"""Fulfilment storage: the tenant's steps, its sagas and their steps.

Every statement names ``tenant_id``. These tables are not record tables (no owner, no
record scope, JSON documents rather than columns a list sorts by), so the repositories
here are small classes of their own rather than ``TenantRepository`` subclasses; every
write queues its event in the same transaction with ``outbox.record``, as the kit's
writes do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from meridian.crud.compiled import fetch, fetchrow
from meridian.crud.repository import VersionMismatch
from meridian.events import outbox
from meridian.fulfilment.models import (
    FulfilmentConfig,
    FulfilmentSaga,
    FulfilmentStep,
    FulfilmentUnfinished,
)
from meridian.fulfilment.service import Saga, Step
from meridian.ids import new_id
from tenancy.context import TenantContext

KIND = "fulfilment"
SAGA_COLUMNS = (
    FulfilmentSaga.id,
    FulfilmentSaga.opportunity_id,
    FulfilmentSaga.won_event_id,
    FulfilmentSaga.owner_id,
    FulfilmentSaga.state,
    FulfilmentSaga.opportunity,
    FulfilmentSaga.config_version,
    FulfilmentSaga.error,
    FulfilmentSaga.created_at,
    FulfilmentSaga.updated_at,
    FulfilmentSaga.finished_at,
)
STEP_COLUMNS = (
    FulfilmentStep.id,
    FulfilmentStep.saga_id,
    FulfilmentStep.position,
    FulfilmentStep.name,
    FulfilmentStep.action,
    FulfilmentStep.compensation,
    FulfilmentStep.timeout,
    FulfilmentStep.max_attempts,
    FulfilmentStep.state,
    FulfilmentStep.attempts,
    FulfilmentStep.compensation_attempts,
    FulfilmentStep.started_at,
    FulfilmentStep.completed_at,
    FulfilmentStep.compensated_at,
    FulfilmentStep.updated_at,
    FulfilmentStep.last_error,
    FulfilmentStep.result,
)
# What a step's transition may change (and so what is written back after one).
STEP_STATE_FIELDS = (
    "state",
    "attempts",
    "compensation_attempts",
    "started_at",
    "completed_at",
    "compensated_at",
    "last_error",
    "result",
)


def _json(value: Any) -> Any:
    # Raw asyncpg connections hand JSONB over as text; ORM sessions decode it.
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _step(row: Mapping[str, Any]) -> Step:
    return Step(
        id=row["id"],
        position=row["position"],
        name=row["name"],
        action=_json(row["action"]),
        compensation=_json(row["compensation"]),
        timeout=row["timeout"],
        max_attempts=row["max_attempts"],
        state=row["state"],
        attempts=row["attempts"],
        compensation_attempts=row["compensation_attempts"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        compensated_at=row["compensated_at"],
        updated_at=row["updated_at"],
        last_error=row["last_error"],
        result=_json(row["result"]),
    )


def _saga(row: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]) -> Saga:
    return Saga(
        id=row["id"],
        opportunity_id=row["opportunity_id"],
        won_event_id=row["won_event_id"],
        owner_id=row["owner_id"],
        state=row["state"],
        opportunity=_json(row["opportunity"]),
        config_version=row["config_version"],
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        steps=[_step(s) for s in sorted(steps, key=lambda s: int(s["position"]))],
    )


# -- the tenant's steps --------------------------------------------------------------
class StepsRepository:
    def __init__(self, session: AsyncSession, tenant: TenantContext) -> None:
        self.session = session
        self.tenant_id = tenant.tenant_id

    @staticmethod
    async def fetch(conn: asyncpg.Connection, tenant_id: UUID) -> dict[str, Any] | None:
        c = FulfilmentConfig
        row = await fetchrow(
            conn,
            select(c.id, c.steps, c.version, c.updated_at).where(c.tenant_id == tenant_id),
        )
        if row is None:
            return None
        return {**dict(row), "steps": _json(row["steps"])}

    async def current(self) -> dict[str, Any] | None:
        """The steps now (a saga's snapshot), read in the session's transaction."""
        c = FulfilmentConfig
        stmt = select(c.id, c.steps, c.version, c.updated_at).where(c.tenant_id == self.tenant_id)
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        return dict(row) if row is not None else None

    async def replace(
        self, steps: list[dict[str, Any]], *, expected_version: int | None
    ) -> dict[str, Any]:
        """Set the steps; ``expected_version`` (an If-Match; 0: never set) must be the
        stored one, else ``VersionMismatch``. Emits ``fulfilment.configured``."""
        c = FulfilmentConfig
        # The row is made on the first change (version 0 until then), so that every
        # change, the first included, is a locked read-check-update of one row.
        await self.session.execute(
            pg_insert(c)
            .values(tenant_id=self.tenant_id, id=new_id(), steps=[], version=0)
            .on_conflict_do_nothing(index_elements=[c.tenant_id])
        )
        locked = (
            (
                await self.session.execute(
                    select(c.id, c.steps, c.version)
                    .where(c.tenant_id == self.tenant_id)
                    .with_for_update()
                )
            )
            .mappings()
            .one()
        )
        if expected_version is not None and locked["version"] != expected_version:
            raise VersionMismatch
        row = (
            (
                await self.session.execute(
                    update(c)
                    .where(c.tenant_id == self.tenant_id, c.id == locked["id"])
                    .values(steps=steps, version=c.version + 1, updated_at=func.now())
                    .returning(c.id, c.steps, c.version, c.updated_at)
                )
            )
            .mappings()
            .one()
        )
        outbox.record(
            self.session,
            self.tenant_id,
            f"{KIND}.configured",
            KIND,
            row["id"],
            record={"steps": row["steps"], "version": row["version"]},
            changes={"steps": {"old": locked["steps"], "new": steps}},
        )
        return dict(row)


# -- sagas ---------------------------------------------------------------------------
class SagaRepository:
    def __init__(self, session: AsyncSession, tenant: TenantContext) -> None:
        self.session = session
        self.tenant_id = tenant.tenant_id

    async def create(
        self,
        *,
        won_event_id: UUID,
        opportunity: Mapping[str, Any],
        config_version: int,
        steps: Sequence[Mapping[str, Any]],
        default_timeout: float,
        default_attempts: int,
    ) -> tuple[Saga, bool]:
        """The saga of this won event: made now with ``steps`` (True), or the one a
        previous delivery of the event made (False)."""
        s = FulfilmentSaga
        saga_id = new_id()
        opportunity_id = UUID(str(opportunity["id"]))
        owner = opportunity.get("owner_id")
        made = await self.session.scalar(
            pg_insert(s)
            .values(
                tenant_id=self.tenant_id,
                id=saga_id,
                opportunity_id=opportunity_id,
                won_event_id=won_event_id,
                owner_id=UUID(str(owner)) if owner else None,
                state="running",
                opportunity=dict(opportunity),
                config_version=config_version,
            )
            .on_conflict_do_nothing(index_elements=[s.tenant_id, s.won_event_id])
            .returning(s.id)
        )
        if made is None:
            existing = await self.session.scalar(
                select(s.id).where(s.tenant_id == self.tenant_id, s.won_event_id == won_event_id)
            )
            assert existing is not None
            found = await self.load(existing, lock=False)
            assert found is not None
            return found, False
        await self.session.execute(
            insert(FulfilmentStep),
            [
                {
                    "tenant_id": self.tenant_id,
                    "id": new_id(),
                    "saga_id": saga_id,
                    "position": position,
                    "name": step["name"],
                    "action": step["action"],
                    "compensation": step["compensation"],
                    "timeout": step.get("timeout") or default_timeout,
                    "max_attempts": step.get("attempts") or default_attempts,
                }
                for position, step in enumerate(steps)
            ],
        )
        await self.session.execute(
            insert(FulfilmentUnfinished).values(tenant_id=self.tenant_id, id=saga_id)
        )
        saga = await self.load(saga_id, lock=False)
        assert saga is not None
        self.emit(saga, "started", {"won_event_id": str(won_event_id)})
        return saga, True

    async def load(self, saga_id: UUID, *, lock: bool) -> Saga | None:
        """The saga and its steps; ``lock``: FOR UPDATE of the saga row, which every
        transition takes first, so transitions of one saga happen one at a time."""
        stmt = select(*SAGA_COLUMNS).where(
            FulfilmentSaga.tenant_id == self.tenant_id, FulfilmentSaga.id == saga_id
        )
        if lock:
            stmt = stmt.with_for_update()
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        if row is None:
            return None
        steps = (
            (
                await self.session.execute(
                    select(*STEP_COLUMNS).where(
                        FulfilmentStep.tenant_id == self.tenant_id,
                        FulfilmentStep.saga_id == saga_id,
                    )
                )
            )
            .mappings()
            .all()
        )
        return _saga(dict(row), [dict(s) for s in steps])

    async def latest_failed(self, opportunity_id: UUID) -> UUID | None:
        s = FulfilmentSaga
        found: UUID | None = await self.session.scalar(
            select(s.id)
            .where(
                s.tenant_id == self.tenant_id,
                s.opportunity_id == opportunity_id,
                s.state == "failed",
            )
            .order_by(s.created_at.desc(), s.id.desc())
            .limit(1)
        )
        return found

    async def save(self, saga: Saga, steps: Sequence[Step]) -> None:
        """Write back a transition: the saga's state and the steps it changed."""
        s = FulfilmentSaga
        await self.session.execute(
            update(s)
            .where(s.tenant_id == self.tenant_id, s.id == saga.id)
            .values(
                state=saga.state,
                error=saga.error,
                finished_at=func.now() if saga.finished else None,
                updated_at=func.now(),
                version=s.version + 1,
            )
        )
        for step in steps:
            await self.session.execute(
                update(FulfilmentStep)
                .where(FulfilmentStep.tenant_id == self.tenant_id, FulfilmentStep.id == step.id)
                .values(
                    **{f: getattr(step, f) for f in STEP_STATE_FIELDS},
                    updated_at=func.now(),
                )
            )
        unfinished = FulfilmentUnfinished
        if saga.finished:
            await self.session.execute(
                delete(unfinished).where(
                    unfinished.tenant_id == self.tenant_id, unfinished.id == saga.id
                )
            )
        else:
            await self.session.execute(
                pg_insert(unfinished)
                .values(tenant_id=self.tenant_id, id=saga.id)
                .on_conflict_do_nothing()
            )

    def emit(self, saga: Saga, action: str, extra: Mapping[str, Any] | None = None) -> None:
        """``fulfilment.<action>`` of ``saga``, in this transaction."""
        outbox.record(
            self.session,
            self.tenant_id,
            f"{KIND}.{action}",
            KIND,
            saga.id,
            owner_id=saga.owner_id,
            record=saga.summary(),
            extra=dict(extra or {}),
        )

    # -- reads on a raw connection (the API) ------------------------------------------
    @staticmethod
    async def of_opportunity(
        conn: asyncpg.Connection, tenant_id: UUID, opportunity_id: UUID
    ) -> list[Saga]:
        sagas = await fetch(
            conn,
            select(*SAGA_COLUMNS)
            .where(
                FulfilmentSaga.tenant_id == tenant_id,
                FulfilmentSaga.opportunity_id == opportunity_id,
            )
            .order_by(FulfilmentSaga.created_at, FulfilmentSaga.id),
        )
        if not sagas:
            return []
        steps = await fetch(
            conn,
            select(*STEP_COLUMNS).where(
                FulfilmentStep.tenant_id == tenant_id,
                FulfilmentStep.saga_id.in_([r["id"] for r in sagas]),
            ),
        )
        by_saga: dict[UUID, list[Mapping[str, Any]]] = {}
        for step in steps:
            by_saga.setdefault(step["saga_id"], []).append(step)
        return [_saga(r, by_saga.get(r["id"], [])) for r in sagas]

    @staticmethod
    async def read_one(conn: asyncpg.Connection, tenant_id: UUID, saga_id: UUID) -> Saga | None:
        row = await fetchrow(
            conn,
            select(*SAGA_COLUMNS).where(
                FulfilmentSaga.tenant_id == tenant_id, FulfilmentSaga.id == saga_id
            ),
        )
        if row is None:
            return None
        steps = await fetch(
            conn,
            select(*STEP_COLUMNS).where(
                FulfilmentStep.tenant_id == tenant_id, FulfilmentStep.saga_id == saga_id
            ),
        )
        return _saga(dict(row), [dict(s) for s in steps])


# The recovery job's read across a shard's tenants (see the migration's policy).
UNFINISHED = """
SELECT tenant_id, id FROM fulfilment_unfinished
 WHERE since < now() - make_interval(secs => $1)
 ORDER BY since
 LIMIT $2
"""


async def unfinished_on(
    pool: asyncpg.Pool, *, older_than: float, limit: int
) -> list[tuple[UUID, UUID]]:
    """(tenant, saga) of sagas on this shard not yet at an end."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL app.fulfilment_sweep = 'on'")
        rows = await conn.fetch(UNFINISHED, older_than, limit)
    return [(r["tenant_id"], r["id"]) for r in rows]
