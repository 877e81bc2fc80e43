"""Lead storage, its scoring rules, and the activity counts lead scoring reads."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, cast
from uuid import UUID

from sqlalchemy import func, select

from meridian.activities.models import Activity
from meridian.crud.filters import FilterField, sealed_field
from meridian.crud.repository import TenantRepository
from meridian.leads.models import (
    LEAD_SOURCES,
    LEAD_STATUSES,
    Lead,
    LeadRow,
    LeadScoringRule,
    LeadScoringRuleRow,
)

SORTABLE = {
    "last_name": Lead.last_name,
    "company": Lead.company,
    "score": Lead.score,
    "created_at": Lead.created_at,
    "updated_at": Lead.updated_at,
}
# What ?filter= may name (meridian.crud.filters); email and phone are sealed: equality
# only, through their blind indexes.
FILTERABLE = {
    "id": FilterField(Lead.id, "uuid"),
    "first_name": FilterField(Lead.first_name, "text"),
    "last_name": FilterField(Lead.last_name, "text"),
    "company": FilterField(Lead.company, "text"),
    "title": FilterField(Lead.title, "text"),
    "source": FilterField(Lead.source, "enum", choices=LEAD_SOURCES),
    "status": FilterField(Lead.status, "enum", choices=LEAD_STATUSES),
    "owner_id": FilterField(Lead.owner_id, "uuid"),
    "external_id": FilterField(Lead.external_id, "text"),
    "score": FilterField(Lead.score, "int"),
    "converted_at": FilterField(Lead.converted_at, "datetime"),
    "created_at": FilterField(Lead.created_at, "datetime"),
    "updated_at": FilterField(Lead.updated_at, "datetime"),
    "email": sealed_field(max_length=320),
    "phone": sealed_field(max_length=40),
}
RULES_SORTABLE = {"created_at": LeadScoringRule.created_at}
# What scoring reads of a lead: every field a condition can test (sealed ones for
# their presence only) and the score it has.
_SCORED = (
    "id",
    "first_name",
    "last_name",
    "company",
    "title",
    "email_enc",
    "phone_enc",
    "source",
    "status",
    "score",
    "score_details",
)


class LeadRepository(TenantRepository[LeadRow]):
    model = Lead
    # Blind indexes serve searches only; the key version is in each ciphertext's header.
    hidden = TenantRepository.hidden | {"email_bidx", "phone_bidx", "enc_version"}

    async def locked(self, lead_id: UUID) -> dict[str, Any] | None:
        """The lead, locked FOR NO KEY UPDATE for the change that follows; None when it
        is not in this repository's scope."""
        stmt = self.select_rows().where(Lead.id == lead_id).with_for_update(key_share=True)
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        return dict(row) if row is not None else None

    async def scored(self, lead_ids: Sequence[UUID]) -> list[dict[str, Any]]:
        """The leads scoring reads, locked like ``locked`` (in id order, so that two
        rescorings of overlapping leads cannot deadlock)."""
        stmt = (
            select(*(self.attr(c) for c in _SCORED))
            .where(Lead.tenant_id == self.tenant_id, Lead.id.in_(lead_ids))
            .order_by(Lead.id)
            .with_for_update(key_share=True)
        )
        return [dict(r) for r in (await self.session.execute(stmt)).mappings()]

    async def page_of_ids(self, after: UUID | None, size: int) -> list[UUID]:
        """The tenant's lead ids in id order after ``after`` (a rescoring's batches)."""
        stmt = select(Lead.id).where(Lead.tenant_id == self.tenant_id)
        if after is not None:
            stmt = stmt.where(Lead.id > after)
        found = await self.session.scalars(stmt.order_by(Lead.id).limit(size))
        return list(found)

    async def activity_counts(self, lead_ids: Sequence[UUID]) -> dict[UUID, dict[str, int]]:
        """Each lead's activities by type (ix_activity_lead)."""
        stmt = (
            select(Activity.lead_id, Activity.type, func.count())
            .where(Activity.tenant_id == self.tenant_id, Activity.lead_id.in_(lead_ids))
            .group_by(Activity.lead_id, Activity.type)
        )
        counts: dict[UUID, dict[str, int]] = defaultdict(dict)
        for lead_id, type_, count in await self.session.execute(stmt):
            counts[cast(UUID, lead_id)][type_] = count
        return counts

    async def rules(self) -> list[dict[str, Any]]:
        """The tenant's scoring rules, active or not (a tenant has dozens at most)."""
        stmt = select(*ScoringRuleRepository.read_columns()).where(
            LeadScoringRule.tenant_id == self.tenant_id
        )
        return [dict(r) for r in (await self.session.execute(stmt)).mappings()]


class ScoringRuleRepository(TenantRepository[LeadScoringRuleRow]):
    model = LeadScoringRule
    event_kind = "lead_scoring_rule"
