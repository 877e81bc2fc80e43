"""Pipelines and their ordered stages.

A pipeline's representation always carries its stages ordered by position (one extra
indexed query per read or page), so its ETag, bumped by every stage change, covers both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, cast
from uuid import UUID

import asyncpg
from sqlalchemy import ColumnElement, Select, Uuid, any_, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY

from meridian.crud.compiled import fetch, fetchrow
from meridian.crud.filters import FilterField
from meridian.crud.pagination import Cursor, Sort
from meridian.crud.repository import TenantRepository
from meridian.opportunities.models import Opportunity
from meridian.pipelines.models import Pipeline, PipelineRow, PipelineStage, StageRow

SORTABLE = {
    "name": Pipeline.name,
    "created_at": Pipeline.created_at,
}
# What ?filter= may name (meridian.crud.filters).
FILTERABLE = {
    "id": FilterField(Pipeline.id, "uuid"),
    "name": FilterField(Pipeline.name, "text"),
    "is_default": FilterField(Pipeline.is_default, "bool"),
    "created_at": FilterField(Pipeline.created_at, "datetime"),
    "updated_at": FilterField(Pipeline.updated_at, "datetime"),
}


class PipelineLock(NamedTuple):
    id: UUID
    is_default: bool
    version: int


def _group(pipeline_ids: Iterable[UUID], stages: Iterable[Any]) -> dict[UUID, list[StageRow]]:
    found: dict[UUID, list[StageRow]] = {pid: [] for pid in pipeline_ids}
    for stage in stages:
        found[stage["pipeline_id"]].append(cast(StageRow, dict(stage)))
    return found


class StageRepository(TenantRepository[StageRow]):
    model = PipelineStage
    event_kind = "stage"

    def _in_pipeline(self, pipeline_id: UUID) -> list[ColumnElement[bool]]:
        return [self.scoped(), PipelineStage.pipeline_id == pipeline_id]

    @classmethod
    def of_pipelines_statement(cls, tenant_id: UUID, pipeline_ids: list[UUID]) -> Select[Any]:
        """The stages of the given pipelines, ordered by position."""
        # = ANY(array) rather than IN: one statement shape whatever the number of ids,
        # which the raw-connection path compiles once.
        ids = bindparam("pipeline_ids", pipeline_ids, type_=ARRAY(Uuid()))
        return (
            select(*cls.read_columns())
            .where(PipelineStage.tenant_id == tenant_id, PipelineStage.pipeline_id == any_(ids))
            .order_by(PipelineStage.pipeline_id, PipelineStage.position, PipelineStage.id)
        )

    async def of_pipeline(self, pipeline_id: UUID) -> list[StageRow]:
        stmt = self.of_pipelines_statement(self.tenant_id, [pipeline_id])
        return [cast(StageRow, dict(r)) for r in (await self.session.execute(stmt)).mappings()]

    @classmethod
    def in_pipeline_statement(
        cls, tenant_id: UUID, pipeline_id: UUID, stage_id: UUID
    ) -> Select[Any]:
        return select(*cls.read_columns()).where(
            PipelineStage.tenant_id == tenant_id,
            PipelineStage.pipeline_id == pipeline_id,
            PipelineStage.id == stage_id,
        )

    async def get_in(self, pipeline_id: UUID, stage_id: UUID) -> StageRow | None:
        stmt = self.in_pipeline_statement(self.tenant_id, pipeline_id, stage_id)
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        return cast(StageRow, dict(row)) if row is not None else None

    @classmethod
    async def fetch_in(
        cls, conn: asyncpg.Connection, tenant_id: UUID, pipeline_id: UUID, stage_id: UUID
    ) -> StageRow | None:
        row = await fetchrow(conn, cls.in_pipeline_statement(tenant_id, pipeline_id, stage_id))
        return cast(StageRow, dict(row)) if row is not None else None

    async def count(self, pipeline_id: UUID) -> int:
        stmt = (
            select(func.count()).select_from(PipelineStage).where(*self._in_pipeline(pipeline_id))
        )
        return int(await self.session.scalar(stmt) or 0)

    async def insert_many(self, rows: Sequence[Mapping[str, Any]]) -> list[StageRow]:
        stmt = (
            insert(PipelineStage)
            .values([{"tenant_id": self.tenant_id, **row} for row in rows])
            .returning(*self.read_columns())
        )
        result = (await self.session.execute(stmt)).mappings().all()
        for row in result:
            self._emit("created", row)
        stages = (cast(StageRow, dict(r)) for r in result)
        return sorted(stages, key=lambda r: (r["position"], r["id"]))

    async def shift(
        self,
        pipeline_id: UUID,
        *,
        start: int,
        stop: int | None,
        delta: int,
        skip: UUID | None = None,
    ) -> None:
        """Move the stages at positions ``start..stop`` (inclusive) by ``delta``.

        Their representation changes, so their versions (and ETags) change too.
        """
        conditions = [*self._in_pipeline(pipeline_id), PipelineStage.position >= start]
        if stop is not None:
            conditions.append(PipelineStage.position <= stop)
        if skip is not None:
            conditions.append(PipelineStage.id != skip)
        await self.session.execute(
            update(PipelineStage)
            .where(*conditions)
            .values(
                position=PipelineStage.position + delta,
                version=PipelineStage.version + 1,
                updated_at=func.now(),
            )
        )

    async def in_use(self, pipeline_id: UUID, stage_id: UUID) -> bool:
        # Both columns, so ix_opportunity_stage (tenant, pipeline, stage) serves it.
        stmt = (
            select(Opportunity.id)
            .where(
                Opportunity.tenant_id == self.tenant_id,
                Opportunity.pipeline_id == pipeline_id,
                Opportunity.stage_id == stage_id,
            )
            .limit(1)
        )
        return await self.session.scalar(stmt) is not None


class PipelineRepository(TenantRepository[PipelineRow]):
    model = Pipeline
    # A pipeline is read with its stages (fetch_one below), not as a bare row.
    one_statement_reads = False

    # -- reads with stages: on a raw connection (GET, list) and in a session (services)
    @classmethod
    async def _with_stages(
        cls, conn: asyncpg.Connection, tenant_id: UUID, rows: list[PipelineRow]
    ) -> list[PipelineRow]:
        if rows:
            ids = [r["id"] for r in rows]
            stages = await fetch(conn, StageRepository.of_pipelines_statement(tenant_id, ids))
            grouped = _group(ids, stages)
            for row in rows:
                row["stages"] = grouped[row["id"]]
        return rows

    @classmethod
    async def fetch_one(
        cls, conn: asyncpg.Connection, tenant_id: UUID, record_id: UUID
    ) -> PipelineRow | None:
        row = await super().fetch_one(conn, tenant_id, record_id)
        if row is None:
            return None
        return (await cls._with_stages(conn, tenant_id, [row]))[0]

    @classmethod
    async def fetch_page(
        cls,
        conn: asyncpg.Connection,
        tenant_id: UUID,
        *,
        where: Sequence[ColumnElement[bool]],
        sort: Sort,
        limit: int,
        cursor: Cursor | None,
    ) -> list[PipelineRow]:
        rows = await super().fetch_page(
            conn, tenant_id, where=where, sort=sort, limit=limit, cursor=cursor
        )
        return await cls._with_stages(conn, tenant_id, rows)

    async def get(self, record_id: UUID) -> PipelineRow | None:
        row = await super().get(record_id)
        if row is None:
            return None
        row["stages"] = await StageRepository(self.session, self.tenant).of_pipeline(record_id)
        return row

    async def lock(self, pipeline_id: UUID) -> PipelineLock | None:
        """The pipeline's default flag and version, row-locked until the transaction ends.

        Pipeline changes take this lock first and stage changes take the same row lock
        through ``touch``, so edits of one pipeline serialise and positions stay dense.
        """
        stmt = (
            select(Pipeline.id, Pipeline.is_default, Pipeline.version)
            .where(self.scoped(), Pipeline.id == pipeline_id)
            .with_for_update()
        )
        row = (await self.session.execute(stmt)).one_or_none()
        return PipelineLock(*row) if row is not None else None

    async def touch(self, pipeline_id: UUID, expected_version: int | None = None) -> bool:
        """Bump the version (a stage changes), which also row-locks the pipeline until
        the transaction ends; False if it does not exist. Raises VersionMismatch."""
        return await self.update(pipeline_id, {}, expected_version=expected_version) is not None

    async def default_id(self) -> UUID | None:
        stmt = select(Pipeline.id).where(self.scoped(), Pipeline.is_default.is_(True))
        found: UUID | None = await self.session.scalar(stmt)
        return found

    async def clear_default(self, keep: UUID | None = None) -> None:
        """Unset the current default (bumping its version), unless it is ``keep``."""
        conditions = [self.scoped(), Pipeline.is_default.is_(True)]
        if keep is not None:
            conditions.append(Pipeline.id != keep)
        await self.session.execute(
            update(Pipeline)
            .where(*conditions)
            .values(is_default=False, version=Pipeline.version + 1, updated_at=func.now())
        )

    async def in_use(self, pipeline_id: UUID) -> bool:
        stmt = (
            select(Opportunity.id)
            .where(Opportunity.tenant_id == self.tenant_id, Opportunity.pipeline_id == pipeline_id)
            .limit(1)
        )
        return await self.session.scalar(stmt) is not None
