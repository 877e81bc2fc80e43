"""Opportunity rules: the account is the tenant's, the stage belongs to the pipeline,
the owner is an active user of the tenant."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from meridian.crud import batch
from meridian.crud.repository import VersionMismatch
from meridian.errors import NOT_FOUND, Conflict, ValidationFailed, invalid_field
from meridian.ids import new_id
from meridian.opportunities.models import OpportunityRow
from meridian.opportunities.repository import OpportunityRepository
from meridian.opportunities.schemas import OpportunityCreate, OpportunityUpdate
from meridian.users.service import user as user_service
from tenancy.context import TenantContext
from tenancy.keyring import TenantKeyring


class OpportunityService:
    async def create(
        self, session: AsyncSession, tenant: TenantContext, body: OpportunityCreate
    ) -> OpportunityRow:
        repo = OpportunityRepository(session, tenant)
        values = body.model_dump()
        await self._check_account(repo, values["account_id"])
        await user_service.require_active(session, tenant, values["owner_id"], "owner_id")
        pipeline_id = values["pipeline_id"]
        if pipeline_id is None:
            pipeline_id = await repo.default_pipeline()
            if pipeline_id is None:
                raise Conflict("pipeline_id: the tenant has no default pipeline; name one")
        stage_id = values["stage_id"]
        if stage_id is None:
            stage_id = await repo.first_stage(pipeline_id)
            if stage_id is None:
                await self._check_pipeline(repo, pipeline_id)
                raise Conflict(f"stage_id: pipeline {pipeline_id} has no stages")
        else:
            await self._check_stage(repo, pipeline_id, stage_id)
        return await repo.insert(
            {"id": new_id(), **values, "pipeline_id": pipeline_id, "stage_id": stage_id}
        )

    async def update(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        opportunity_id: UUID,
        body: OpportunityUpdate,
        expected_version: int | None,
    ) -> OpportunityRow | None:
        repo = OpportunityRepository(session, tenant)
        values = body.changes()
        await user_service.require_active(session, tenant, values.get("owner_id"), "owner_id")
        if {"account_id", "pipeline_id", "stage_id"}.isdisjoint(values):
            return await repo.update(opportunity_id, values, expected_version=expected_version)

        # An unknown opportunity is 404 and a stale ETag 412 before any complaint about
        # the body's references; the row stays locked, so the pipeline read here is the
        # one the stage is checked against.
        current = await repo.placement(opportunity_id)
        if current is None:
            return None
        if expected_version is not None and current["version"] != expected_version:
            raise VersionMismatch
        if "account_id" in values:
            await self._check_account(repo, values["account_id"])
        pipeline_id = values.get("pipeline_id", current["pipeline_id"])
        if "stage_id" in values:
            await self._check_stage(repo, pipeline_id, values["stage_id"])
        elif pipeline_id != current["pipeline_id"]:
            raise ValidationFailed(
                "stage_id: required when pipeline_id changes (a stage of the new pipeline)"
            )
        return await repo.update(opportunity_id, values, expected_version=expected_version)

    async def _check_account(self, repo: OpportunityRepository, account_id: UUID) -> None:
        if not await repo.account_exists(account_id):
            raise invalid_field("account_id", f"no account {account_id}", NOT_FOUND)

    async def _check_pipeline(self, repo: OpportunityRepository, pipeline_id: UUID) -> None:
        if not await repo.pipeline_exists(pipeline_id):
            raise invalid_field("pipeline_id", f"no pipeline {pipeline_id}", NOT_FOUND)

    async def _check_stage(
        self, repo: OpportunityRepository, pipeline_id: UUID, stage_id: UUID
    ) -> None:
        owner = await repo.pipeline_of_stage(stage_id)
        if owner == pipeline_id:
            return
        await self._check_pipeline(repo, pipeline_id)
        message = (
            f"no stage {stage_id}"
            if owner is None
            else f"stage {stage_id} is not in pipeline {pipeline_id}"
        )
        raise invalid_field("stage_id", message, NOT_FOUND)


opportunity = OpportunityService()


def writes(
    tenant: TenantContext, keyring: TenantKeyring, allow_duplicate: bool = False
) -> batch.Writes[OpportunityCreate, OpportunityUpdate]:
    """The opportunities' writes as the batch flow takes them (``POST /v1/opportunities/batch``, an
    import's rows): this service's own create and update, so an item is checked and
    stored exactly as a single ``POST`` or ``PATCH``."""
    return batch.Writes(
        "opportunity",
        "opportunities",
        OpportunityRepository,
        OpportunityCreate,
        OpportunityUpdate,
        create=lambda session, new: opportunity.create(session, tenant, new),
        update=lambda session, record_id, changes, version: opportunity.update(
            session, tenant, record_id, changes, version
        ),
    )
