"""Opportunity storage, and the reads of accounts and pipelines its rules need."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from sqlalchemy import select

from meridian.accounts.models import Account
from meridian.crud.filters import FilterField
from meridian.crud.repository import TenantRepository
from meridian.opportunities.models import Opportunity, OpportunityRow
from meridian.pipelines.models import Pipeline, PipelineStage

SORTABLE = {
    "created_at": Opportunity.created_at,
    "updated_at": Opportunity.updated_at,
    "amount": Opportunity.amount,
    "name": Opportunity.name,
}
# What ?filter= may name (meridian.crud.filters).
FILTERABLE = {
    "id": FilterField(Opportunity.id, "uuid"),
    "account_id": FilterField(Opportunity.account_id, "uuid"),
    "name": FilterField(Opportunity.name, "text"),
    "amount": FilterField(Opportunity.amount, "decimal"),
    # Stored upper-cased (ISO 4217).
    "currency": FilterField(Opportunity.currency, "text", normalize=str.upper),
    "pipeline_id": FilterField(Opportunity.pipeline_id, "uuid"),
    "stage_id": FilterField(Opportunity.stage_id, "uuid"),
    "expected_close_date": FilterField(Opportunity.expected_close_date, "date"),
    "owner_id": FilterField(Opportunity.owner_id, "uuid"),
    "external_id": FilterField(Opportunity.external_id, "text"),
    "created_at": FilterField(Opportunity.created_at, "datetime"),
    "updated_at": FilterField(Opportunity.updated_at, "datetime"),
}


class OpportunityRepository(TenantRepository[OpportunityRow]):
    model = Opportunity

    async def derived_events(
        self, row: Mapping[Any, Any], changes: Mapping[str, Any] | None
    ) -> None:
        """An opportunity entering a stage: ``opportunity.stage_changed`` (on an update),
        and ``opportunity.won`` or ``.lost`` when that stage closes it (also when it is
        created closed). Downstream work starts from these (a deal's fulfilment)."""
        if changes is not None and "stage_id" not in changes:
            return
        stage = {"stage_id": str(row["stage_id"]), "stage_kind": await self._stage_kind(row)}
        if changes is not None:
            self.emit_derived(
                "stage_changed", row, {**stage, "from_stage_id": changes["stage_id"]["old"]}
            )
        if stage["stage_kind"] in ("won", "lost"):
            self.emit_derived(str(stage["stage_kind"]), row, stage)

    async def _stage_kind(self, row: Mapping[Any, Any]) -> str | None:
        stmt = select(PipelineStage.kind).where(
            PipelineStage.tenant_id == self.tenant_id, PipelineStage.id == row["stage_id"]
        )
        kind: str | None = await self.session.scalar(stmt)
        return kind

    async def placement(self, opportunity_id: UUID) -> dict[str, Any] | None:
        """Version, pipeline and stage, locking the row for the update that follows."""
        stmt = (
            select(Opportunity.version, Opportunity.pipeline_id, Opportunity.stage_id)
            .where(self.scoped(), Opportunity.id == opportunity_id)
            .with_for_update(key_share=True)
        )
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        return dict(row) if row is not None else None

    # Referenced accounts and stages are read FOR KEY SHARE (the lock a foreign key
    # check takes), so they cannot vanish between the check and the write it guards.
    # Pipelines need no lock: the stage row is what the foreign key names.

    async def account_exists(self, account_id: UUID) -> bool:
        return await self.reference_exists(Account, account_id)

    async def pipeline_exists(self, pipeline_id: UUID) -> bool:
        stmt = select(Pipeline.id).where(
            Pipeline.tenant_id == self.tenant_id, Pipeline.id == pipeline_id
        )
        return await self.session.scalar(stmt) is not None

    async def default_pipeline(self) -> UUID | None:
        stmt = select(Pipeline.id).where(
            Pipeline.tenant_id == self.tenant_id, Pipeline.is_default.is_(True)
        )
        pipeline_id: UUID | None = await self.session.scalar(stmt)
        return pipeline_id

    async def first_stage(self, pipeline_id: UUID) -> UUID | None:
        stmt = (
            select(PipelineStage.id)
            .where(
                PipelineStage.tenant_id == self.tenant_id,
                PipelineStage.pipeline_id == pipeline_id,
            )
            .order_by(PipelineStage.position, PipelineStage.id)
            .limit(1)
            .with_for_update(read=True, key_share=True)
        )
        stage_id: UUID | None = await self.session.scalar(stmt)
        return stage_id

    async def pipeline_of_stage(self, stage_id: UUID) -> UUID | None:
        """The pipeline the tenant's stage belongs to; None if there is no such stage."""
        stmt = (
            select(PipelineStage.pipeline_id)
            .where(PipelineStage.tenant_id == self.tenant_id, PipelineStage.id == stage_id)
            .with_for_update(read=True, key_share=True)
        )
        pipeline_id: UUID | None = await self.session.scalar(stmt)
        return pipeline_id
