"""Event retention: a tenant's events older than its retention are deleted, hourly.

The retention is the tenant's ``event_retention_days`` (set by platform admins) or the
platform default. Only events the relay has published are deleted, so retention never
takes an event before its webhooks and consumers saw it. History and the audit trail
are read from the same log, so they are kept exactly as long. The same pass deletes the
snapshots of merges past their undo window (``meridian.merges.repository.
expire_snapshots``; the merge's record stays), and the tenant's files past their
``expires_at`` (exports, import error reports, unfinished uploads: ``meridian.transfers``,
``MERIDIAN_TRANSFER_RETENTION_DAYS``; their chunks go with them, the jobs stay listed).
"""

from __future__ import annotations

import logging
from uuid import UUID

from sqlalchemy import select, text

from meridian.merges.repository import expire_snapshots
from meridian.runtime import Runtime
from tenancy.models import DirectoryEntry, Tenant

logger = logging.getLogger("meridian.worker.retention")

PRUNE = text(
    """
    DELETE FROM event_outbox
     WHERE tenant_id = :tenant_id
       AND occurred_at < now() - make_interval(days => :days)
       AND seq <= COALESCE(
             (SELECT relayed_seq FROM event_relay WHERE tenant_id = :tenant_id), 0)
    """
)

PRUNE_FILES = text("DELETE FROM data_file WHERE tenant_id = :tenant_id AND expires_at < now()")


async def tenants_with_retention(runtime: Runtime) -> list[tuple[UUID, int | None]]:
    async with runtime.control.connect() as conn:
        rows = await conn.execute(
            select(Tenant.id, Tenant.event_retention_days)
            .join(DirectoryEntry, DirectoryEntry.tenant_id == Tenant.id)
            .where(Tenant.status.in_(("active", "suspended")))
        )
        return [(r[0], r[1]) for r in rows]


async def prune_tenant(runtime: Runtime, tenant_id: UUID, days: int) -> int:
    tenant = await runtime.directory.resolve(tenant_id)
    if tenant is None:
        return 0
    async with runtime.router.transaction(
        tenant, write=True, on_stale=runtime.refresh_tenant
    ) as session:
        result = await session.execute(PRUNE, {"tenant_id": tenant_id, "days": days})
        await expire_snapshots(session, tenant_id)
        await session.execute(PRUNE_FILES, {"tenant_id": tenant_id})
    return int(getattr(result, "rowcount", 0) or 0)


async def prune_expired(runtime: Runtime, *, default_days: int) -> int:
    """One retention pass over every tenant; a tenant whose shard fails is left for the
    next pass."""
    total = 0
    for tenant_id, days in await tenants_with_retention(runtime):
        try:
            total += await prune_tenant(runtime, tenant_id, days or default_days)
        except Exception as exc:
            logger.warning("retention of tenant %s failed: %s", tenant_id, exc)
    return total
