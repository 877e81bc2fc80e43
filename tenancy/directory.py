"""Tenant resolution: tenant id → :class:`TenantContext`, read from the control plane.

A short in-process TTL bounds how long a suspension or a move takes to be seen by an
instance that did not make the change; the shard's residency check (not this cache)
is what keeps a move safe.
"""

from __future__ import annotations

import asyncio
import time
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tenancy.context import TenantContext, TenantStatus
from tenancy.models import DirectoryEntry, Tenant


class TenantDirectory:
    def __init__(self, control: AsyncEngine, *, ttl_seconds: float = 5.0) -> None:
        self._control = control
        self._ttl = ttl_seconds
        self._entries: dict[UUID, tuple[float, TenantContext | None]] = {}
        self._inflight: dict[UUID, asyncio.Future[TenantContext | None]] = {}

    async def resolve(self, tenant_id: UUID) -> TenantContext | None:
        """The tenant's context, or None when the tenant does not exist."""
        hit = self._entries.get(tenant_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        # Single-flight: many concurrent misses for one tenant cost one query.
        pending = self._inflight.get(tenant_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[TenantContext | None] = asyncio.get_running_loop().create_future()
        self._inflight[tenant_id] = fut
        try:
            ctx = await self.load(tenant_id)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._inflight.pop(tenant_id, None)
        self._entries[tenant_id] = (time.monotonic() + self._ttl, ctx)
        fut.set_result(ctx)
        return ctx

    async def load(self, tenant_id: UUID) -> TenantContext | None:
        """Read the tenant straight from the control plane (no cache)."""
        stmt = (
            select(
                Tenant.id,
                Tenant.slug,
                Tenant.region,
                Tenant.status,
                DirectoryEntry.shard_id,
                DirectoryEntry.epoch,
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
        )

    def invalidate(self, tenant_id: UUID | None = None) -> None:
        """Forget one tenant (after a change to it), or every tenant."""
        if tenant_id is None:
            self._entries.clear()
        else:
            self._entries.pop(tenant_id, None)
