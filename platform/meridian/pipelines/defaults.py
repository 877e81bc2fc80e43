"""The default sales pipeline every new tenant starts with."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from meridian.ids import new_id
from meridian.pipelines.models import Pipeline, PipelineStage
from tenancy.context import TenantContext

DEFAULT_STAGES: tuple[tuple[str, int, str], ...] = (
    ("Prospecting", 10, "open"),
    ("Qualification", 25, "open"),
    ("Proposal", 50, "open"),
    ("Negotiation", 75, "open"),
    ("Closed Won", 100, "won"),
    ("Closed Lost", 0, "lost"),
)


async def seed_default_pipeline(session: AsyncSession, tenant: TenantContext) -> bool:
    """Create the default pipeline unless the tenant has one (safe to re-run)."""
    existing = await session.scalar(
        select(func.count())
        .select_from(Pipeline)
        .where(Pipeline.tenant_id == tenant.tenant_id, Pipeline.is_default.is_(True))
    )
    if existing:
        return False
    pipeline_id = new_id()
    await session.execute(
        insert(Pipeline).values(
            tenant_id=tenant.tenant_id, id=pipeline_id, name="Sales", is_default=True
        )
    )
    await session.execute(
        insert(PipelineStage),
        [
            {
                "tenant_id": tenant.tenant_id,
                "id": new_id(),
                "pipeline_id": pipeline_id,
                "name": name,
                "position": position,
                "probability": Decimal(probability),
                "kind": kind,
            }
            for position, (name, probability, kind) in enumerate(DEFAULT_STAGES)
        ],
    )
    return True
