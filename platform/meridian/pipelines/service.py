"""Pipeline rules: exactly one default pipeline per tenant; stages at dense positions.

Every change to a pipeline or to one of its stages first locks (or version-bumps) the
pipeline row, so edits of one pipeline run one at a time and the pipeline's ETag changes
whenever its stages do. Two concurrent "make this the default" requests on different
pipelines can still collide on the one-default unique index: the loser gets 409.
"""

from __future__ import annotations

from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from meridian.crud.repository import VersionMismatch
from meridian.errors import Conflict, NotFound
from meridian.ids import new_id
from meridian.pipelines.models import PipelineRow, StageRow
from meridian.pipelines.repository import PipelineRepository, StageRepository
from meridian.pipelines.schemas import (
    MAX_STAGES,
    PipelineCreate,
    PipelineUpdate,
    StageAdd,
    StageUpdate,
)
from tenancy.context import TenantContext


def _pipeline_not_found(pipeline_id: UUID) -> NotFound:
    return NotFound(f"No pipeline with id {pipeline_id}.")


def _stage_not_found(pipeline_id: UUID, stage_id: UUID) -> NotFound:
    return NotFound(f"No stage with id {stage_id} in pipeline {pipeline_id}.")


class PipelineService:
    async def create(
        self, session: AsyncSession, tenant: TenantContext, body: PipelineCreate
    ) -> PipelineRow:
        pipelines = PipelineRepository(session, tenant)
        current_default = await pipelines.default_id()
        if body.is_default and current_default is not None:
            # Before the insert: the one-default unique index is checked per statement.
            await pipelines.clear_default()
        pipeline_id = new_id()
        row = await pipelines.insert(
            {
                "id": pipeline_id,
                "name": body.name,
                "is_default": body.is_default or current_default is None,
            }
        )
        row["stages"] = await StageRepository(session, tenant).insert_many(
            [
                {"id": new_id(), "pipeline_id": pipeline_id, "position": position, **stage}
                for position, stage in enumerate(s.model_dump() for s in body.stages)
            ]
        )
        return row

    async def update(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        pipeline_id: UUID,
        body: PipelineUpdate,
        expected_version: int | None,
    ) -> PipelineRow | None:
        values = body.changes()
        pipelines = PipelineRepository(session, tenant)
        current = await pipelines.lock(pipeline_id)
        if current is None:
            return None
        if expected_version is not None and current.version != expected_version:
            raise VersionMismatch
        if values.get("is_default") is False and current.is_default:
            raise Conflict(
                "A tenant always has one default pipeline: make another pipeline the "
                "default instead of unsetting this one."
            )
        if values.get("is_default") is True and not current.is_default:
            await pipelines.clear_default(keep=pipeline_id)
        await pipelines.update(pipeline_id, values, expected_version=None)
        return await pipelines.get(pipeline_id)

    async def delete(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        pipeline_id: UUID,
        expected_version: int | None,
    ) -> None:
        pipelines = PipelineRepository(session, tenant)
        current = await pipelines.lock(pipeline_id)
        if current is None:
            raise _pipeline_not_found(pipeline_id)
        if expected_version is not None and current.version != expected_version:
            raise VersionMismatch
        if current.is_default:
            raise Conflict(
                "The default pipeline cannot be deleted; make another pipeline the default first."
            )
        if await pipelines.in_use(pipeline_id):
            raise Conflict(
                "Opportunities are in this pipeline; move them to another pipeline first."
            )
        # Stages go with it (ON DELETE CASCADE).
        await pipelines.delete(pipeline_id, expected_version=None)

    # -- stages -------------------------------------------------------------------------
    async def _stage(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        pipeline_id: UUID,
        stage_id: UUID,
        expected_version: int | None,
    ) -> tuple[StageRepository, StageRow]:
        """The stage a change is about, at ``expected_version`` (its If-Match), with its
        pipeline version-bumped and so row-locked: stage edits of a pipeline serialise."""
        stages = StageRepository(session, tenant)
        if not await PipelineRepository(session, tenant).touch(pipeline_id):
            raise _pipeline_not_found(pipeline_id)
        stage = await stages.get_in(pipeline_id, stage_id)
        if stage is None:
            raise _stage_not_found(pipeline_id, stage_id)
        if expected_version is not None and stage["version"] != expected_version:
            raise VersionMismatch
        return stages, stage

    async def add_stage(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        pipeline_id: UUID,
        body: StageAdd,
        expected_version: int | None,
    ) -> StageRow:
        """Insert a stage; ``expected_version`` is the pipeline's (its If-Match)."""
        pipelines = PipelineRepository(session, tenant)
        # The version bump also takes the pipeline's row lock: stage edits serialise.
        if not await pipelines.touch(pipeline_id, expected_version):
            raise _pipeline_not_found(pipeline_id)
        stages = StageRepository(session, tenant)
        count = await stages.count(pipeline_id)
        if count >= MAX_STAGES:
            raise Conflict(f"A pipeline has at most {MAX_STAGES} stages; this one is full.")
        values = body.model_dump()
        position = values.pop("position")
        if position is None:
            position = count
        elif position > count:
            raise Conflict(f"position: the pipeline has {count} stages; 0 to {count} inserts")
        await stages.shift(pipeline_id, start=position, stop=None, delta=1)
        return await stages.insert(
            {"id": new_id(), "pipeline_id": pipeline_id, "position": position, **values}
        )

    async def update_stage(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        pipeline_id: UUID,
        stage_id: UUID,
        body: StageUpdate,
        expected_version: int | None,
    ) -> StageRow:
        values = body.changes()
        stages, stage = await self._stage(session, tenant, pipeline_id, stage_id, expected_version)
        old, new = stage["position"], values.get("position")
        if new is not None and new != old:
            count = await stages.count(pipeline_id)
            if new >= count:
                raise Conflict(
                    f"position: the pipeline has {count} stages; positions are 0 to {count - 1}"
                )
            if new < old:
                await stages.shift(pipeline_id, start=new, stop=old - 1, delta=1, skip=stage_id)
            else:
                await stages.shift(pipeline_id, start=old + 1, stop=new, delta=-1, skip=stage_id)
        row = await stages.update(stage_id, values, expected_version=None)
        assert row is not None  # found above, under the pipeline's lock
        return row

    async def delete_stage(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        pipeline_id: UUID,
        stage_id: UUID,
        expected_version: int | None,
    ) -> None:
        stages, stage = await self._stage(session, tenant, pipeline_id, stage_id, expected_version)
        if await stages.count(pipeline_id) <= 1:
            raise Conflict("A pipeline needs at least one stage; this is its last.")
        if await stages.in_use(pipeline_id, stage_id):
            raise Conflict("Opportunities are in this stage; move them to another stage first.")
        await stages.delete(stage_id, expected_version=None)
        await stages.shift(pipeline_id, start=stage["position"] + 1, stop=None, delta=-1)


pipeline = PipelineService()
