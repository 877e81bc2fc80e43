"""Keeping the summaries: the worker's consumer and hourly refresh, and the rebuild.

- ``activity.created``: the summaries of the records the activity names (its contact,
  account and opportunity) are computed again from the activity table;
- ``contact|account|opportunity.deleted``: the record's summary goes, and its account's
  is computed again (the record's activities went with it, without events of their own);
- hourly (``projections_refresh``): rows whose ``refresh_at`` has come, i.e. whose 30 or
  90-day window or next task has moved on since they were computed, are computed again.

Each is a statement computing rows from the activities (``repository``), so an event
handled twice, late or out of order leaves the same rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from saq import CronJob
from sqlalchemy import or_, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from meridian.directory import CachedDirectory
from meridian.projections.repository import LINK, InteractionWriter
from meridian.worker.consumers import Consumer
from meridian.worker.main import WorkerContext, WorkerPlug, context_of
from sharding.router import OnStale, ShardRouter
from tenancy.context import TenantContext, TenantStatus
from tenancy.models import DirectoryEntry, Tenant

logger = logging.getLogger("meridian.projections")

GROUP = "projections"
# Minute 23 of every hour: away from the hour, when retention (minute 17) and others run.
REFRESH_CRON = "23 * * * *"
# Rows recomputed per transaction by the refresh.
REFRESH_BATCH = 500
# A rebuild is an operator's command over a whole tenant, not a request: its statements
# may take longer than the shards' per-statement limit.
REBUILD_STATEMENT_TIMEOUT = text("SET LOCAL statement_timeout = '15min'")
DELETIONS = {f"{kind}.deleted": kind for kind in LINK}


@dataclass(frozen=True, slots=True)
class Platform:
    """What the summaries' jobs use of the platform: the tenants (control plane and
    directory) and their shards."""

    control: AsyncEngine
    directory: CachedDirectory
    router: ShardRouter
    on_stale: OnStale


def platform_of(ctx: WorkerContext) -> Platform:
    rt = ctx.runtime
    return Platform(rt.control, rt.directory, rt.router, rt.refresh_tenant)


# -- events --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Affected:
    recompute: tuple[tuple[str, UUID], ...] = ()
    drop: tuple[tuple[str, UUID], ...] = ()


def _uuid(value: Any) -> UUID | None:
    return UUID(str(value)) if value else None


def affected(event: dict[str, Any]) -> Affected:
    """The summaries an event changes."""
    type_ = event.get("type")
    record = (event.get("data") or {}).get("record") or {}
    if type_ == "activity.created":
        linked = [(kind, _uuid(record.get(link))) for kind, link in LINK.items()]
        return Affected(recompute=tuple((k, i) for k, i in linked if i is not None))
    kind = DELETIONS.get(str(type_))
    record_id = _uuid((event.get("record") or {}).get("id"))
    if kind is None or record_id is None:
        return Affected()
    account = _uuid(record.get("account_id")) if kind != "account" else None
    return Affected(
        recompute=(("account", account),) if account is not None else (),
        drop=((kind, record_id),),
    )


async def _tenant(platform: Platform, tenant_id: UUID) -> TenantContext | None:
    tenant = await platform.directory.resolve(tenant_id)
    if tenant is None or tenant.status is TenantStatus.DELETED:
        return None  # gone (crypto-shredded): nothing to keep for it
    return tenant


async def apply_event(platform: Platform, tenant_id: UUID, event: dict[str, Any]) -> None:
    """The consumer's handler: the event's summaries computed again, in one transaction."""
    work = affected(event)
    if not work.recompute and not work.drop:
        return
    tenant = await _tenant(platform, tenant_id)
    if tenant is None:
        return
    async with platform.router.transaction(
        tenant, write=True, on_stale=platform.on_stale
    ) as session:
        writer = InteractionWriter(session, tenant.tenant_id)
        for kind, record_id in work.drop:
            await writer.drop(kind, record_id)
        for kind, record_id in work.recompute:
            await writer.recompute(kind, record_id)


# -- the passing of time -------------------------------------------------------------------
async def tenant_ids(control: AsyncEngine) -> list[UUID]:
    """The tenants whose data is kept (as retention's: placed, not deleted)."""
    async with control.connect() as conn:
        rows = await conn.execute(
            select(Tenant.id)
            .join(DirectoryEntry, DirectoryEntry.tenant_id == Tenant.id)
            .where(Tenant.status.in_(("active", "suspended")))
            .order_by(Tenant.id)
        )
        return [r[0] for r in rows]


async def refresh_tenant(platform: Platform, tenant: TenantContext, *, batch: int) -> int:
    """The tenant's rows whose time has come, computed again; the number written."""
    total = 0
    for kind in LINK:
        async with platform.router.transaction(
            tenant, write=True, on_stale=platform.on_stale
        ) as session:
            await InteractionWriter(session, tenant.tenant_id).drop_empty_stale(kind)
        while True:
            async with platform.router.transaction(
                tenant, write=True, on_stale=platform.on_stale
            ) as session:
                done = await InteractionWriter(session, tenant.tenant_id).refresh_stale(kind, batch)
            total += done
            # A full batch may have left more behind; a short one left none (rows
            # computed meanwhile by events are fresh already).
            if done < batch:
                break
    return total


async def refresh_all(platform: Platform, *, batch: int = REFRESH_BATCH) -> int:
    """One pass over every tenant; a tenant whose shard fails waits for the next pass."""
    total = 0
    for tenant_id in await tenant_ids(platform.control):
        try:
            tenant = await _tenant(platform, tenant_id)
            if tenant is not None:
                total += await refresh_tenant(platform, tenant, batch=batch)
        except Exception as exc:
            logger.warning("refreshing the summaries of tenant %s failed: %s", tenant_id, exc)
    return total


async def projections_refresh(job_ctx: dict[str, Any]) -> int:
    """The hourly saq job."""
    return await refresh_all(platform_of(context_of(job_ctx)))


# -- rebuilding ----------------------------------------------------------------------------
async def find_tenant(control: AsyncEngine, tenant: str) -> UUID:
    """A tenant's id from its id or slug; LookupError when there is none."""
    try:
        by_id: UUID | None = UUID(tenant)
    except ValueError:
        by_id = None
    async with control.connect() as conn:
        found: UUID | None = await conn.scalar(
            select(Tenant.id).where(
                or_(Tenant.id == by_id, Tenant.slug == tenant) if by_id else Tenant.slug == tenant
            )
        )
    if found is None:
        raise LookupError(f"no tenant {tenant!r}")
    return found


async def rebuild_tenant(platform: Platform, tenant: TenantContext) -> dict[str, int]:
    """Every summary of the tenant from its activities, in one transaction (readers see
    the old rows until it commits); rows written per kind."""
    async with platform.router.transaction(
        tenant, write=True, on_stale=platform.on_stale
    ) as session:
        await session.execute(REBUILD_STATEMENT_TIMEOUT)
        return await InteractionWriter(session, tenant.tenant_id).rebuild()


async def rebuild(platform: Platform, tenant: str | None = None) -> dict[str, Any]:
    """``meridian projections rebuild``: one tenant (id or slug) or every one."""
    ids = (
        [await find_tenant(platform.control, tenant)]
        if tenant
        else await tenant_ids(platform.control)
    )
    done: list[dict[str, Any]] = []
    for tenant_id in ids:
        # Uncached: an operator's command acts on the directory as it is now.
        ctx = await platform.directory.load(tenant_id)
        if ctx is None or ctx.status is TenantStatus.DELETED:
            if tenant:
                raise LookupError(f"tenant {tenant!r} is not placed on a shard or is deleted")
            continue
        rows = await rebuild_tenant(platform, ctx)
        done.append({"tenant": str(tenant_id), "slug": ctx.slug, "rows": rows})
    return {"tenants": len(done), "rows": sum(sum(d["rows"].values()) for d in done), "done": done}


# -- the worker's part ---------------------------------------------------------------------
def plug(ctx: WorkerContext) -> WorkerPlug:
    platform = platform_of(ctx)

    async def handle(tenant_id: UUID, event: dict[str, Any]) -> None:
        await apply_event(platform, tenant_id, event)

    return WorkerPlug(
        consumers=[Consumer(GROUP, handle)],
        cron_jobs=[CronJob(projections_refresh, cron=REFRESH_CRON, unique=True)],
    )
