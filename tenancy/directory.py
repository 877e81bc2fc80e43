"""Tenant resolution: tenant id → :class:`TenantContext`, read from the control plane.

This is the loader only; the application caches its results in the two-level cache
(``meridian.directory``). The shard's residency check, not cache timing, is what keeps
a move safe: a stale entry is refused by the shard and re-read.
"""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tenancy.context import TenantContext, TenantStatus
from tenancy.models import DirectoryEntry, Tenant


class TenantDirectory:
    def __init__(self, control: AsyncEngine) -> None:
        self._control = control

    async def load(self, tenant_id: UUID) -> TenantContext | None:
        """Read the tenant straight from the control plane; None if it does not exist."""
        stmt = (
            select(
                Tenant.id,
                Tenant.slug,
                Tenant.region,
                Tenant.status,
                DirectoryEntry.shard_id,
                DirectoryEntry.epoch,
                Tenant.plan,
                Tenant.limits,
            )
            .join(DirectoryEntry, DirectoryEntry.tenant_id == Tenant.id)
            .where(Tenant.id == tenant_id)
        )
        async with self._control.connect() as conn:
            row = (await conn.execute(stmt)).one_or_none()
        if row is None:
            return None
        return TenantContext(
            tenant_id=row.id,
            slug=row.slug,
            shard_id=row.shard_id,
            region=row.region,
            status=TenantStatus(row.status),
            epoch=row.epoch,
            plan=row.plan,
            limits=tuple(sorted((row.limits or {}).items())),
        )
