"""The transfer jobs in the worker: ``transfer_export`` and ``transfer_import`` (one saq
job per export or import, queued by the API), and ``transfers_recover``, which queues
again every job whose worker has not reported for ``MERIDIAN_TRANSFER_STALE_AFTER``
seconds (its job lost with a flushed Redis, never queued because Redis was down; a job
saq still holds is deduped by its key).

A job runs as its requester: the worker rebuilds the request's access from the job's
row (the user's role and state as they are now, or the client's role), so the export
reads exactly what that user's list would and the import writes as that user would,
record scope, permissions and events' actor included. A requester who lost the
permission, or a user deactivated since, fails the job.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from saq import CronJob

from meridian.deps import TenantAccess
from meridian.errors import Unauthorized
from meridian.events import outbox
from meridian.identity import resolve_actor
from meridian.principal import TENANT_SCOPES, Principal
from meridian.transfers import exporter, importer, jobs, repository, service
from meridian.transfers.exceptions import JobFailed, Superseded
from meridian.transfers.models import FINISHED, DataExport, DataImport
from meridian.transfers.objects import OBJECTS
from meridian.worker.main import WorkerContext, WorkerPlug, context_of
from tenancy.context import TenantContext, TenantStatus

logger = logging.getLogger("meridian.transfers")
RECOVER_BATCH = 500
_MODELS: dict[str, repository.Job] = {service.EXPORT: DataExport, service.IMPORT: DataImport}


async def requester_access(
    wctx: WorkerContext, tenant: TenantContext, row: dict[str, Any]
) -> TenantAccess:
    """What ``RequireTenant`` would hand the requester's request now."""
    runtime = wctx.runtime
    who = service.Requester.of(row)
    principal = Principal(
        subject=who.id,
        client_id=who.id if who.type == "client" else "",
        tenant_id=tenant.tenant_id,
        scopes=frozenset(TENANT_SCOPES),
        token_id=f"transfer:{row['id']}",
        expires_at=0,
        user_id=who.user_id,
        role=who.role,
    )
    try:
        actor = await resolve_actor(runtime, tenant, principal)
    except Unauthorized as exc:
        raise JobFailed("Its requester is no longer an active user of the tenant.") from exc
    policy = await runtime.authz.get(tenant.tenant_id)
    return TenantAccess(principal, tenant, runtime, actor, policy)


def _require(access: TenantAccess, obj: str, act: str) -> None:
    if not access.can(obj, act):
        raise JobFailed(f"Its requester's role ({access.actor.role}) may no longer {act} {obj}.")


async def run_job(ctx: dict[str, Any], kind: str, tenant_id: UUID, job_id: UUID) -> str:
    wctx = context_of(ctx)
    runtime, settings = wctx.runtime, wctx.settings
    tenant = await runtime.directory.resolve(tenant_id)
    if tenant is None or tenant.status is not TenantStatus.ACTIVE:
        # Suspended (or not there): the recovery job asks again later.
        return "tenant not active"
    model = _MODELS[kind]
    async with runtime.router.reader(tenant, on_stale=runtime.refresh_tenant) as conn:
        row = await repository.read_job(conn, model, tenant_id, job_id)
    if row is None or row["state"] in FINISHED:
        return row["state"] if row is not None else "gone"

    async def touch() -> None:
        job = ctx.get("job")
        try:
            if job is not None:
                await job.update()  # the heartbeat saq watches
        except Exception as exc:  # Redis away a moment: the next chunk touches again
            logger.debug("%s %s: heartbeat not sent: %s", kind, job_id, exc)

    try:
        access = await requester_access(wctx, tenant, row)
        spec = OBJECTS[row["object"]]
        if kind == service.EXPORT:
            _require(access, "exports", "create")
            _require(access, spec.object, "read")
            return await exporter.Exporter(
                access,
                runtime.keyring,
                spec,
                row,
                page_rows=settings.export_page_rows,
                retention_days=settings.transfer_retention_days,
                touch=touch,
            ).run()
        _require(access, "imports", "create")
        _require(access, spec.object, "create")
        if row["options"]["on_match"] == "update":
            _require(access, spec.object, "update")
        return await importer.Importer(
            access,
            runtime.keyring,
            spec,
            row,
            chunk_rows=settings.import_chunk_rows,
            retention_days=settings.transfer_retention_days,
            touch=touch,
        ).run()
    except Superseded as exc:
        logger.info("%s %s: this run stops: %s", kind, job_id, exc)
        if kind == service.IMPORT:
            await _closed(wctx, tenant, job_id)
        return "superseded"
    except JobFailed as exc:
        logger.info("%s %s failed: %s", kind, job_id, exc)
        await _failed(wctx, tenant, kind, job_id, str(exc))
        return "failed"
    except Exception as exc:
        job = ctx.get("job")
        if job is not None and job.attempts >= jobs.ATTEMPTS:
            logger.exception("%s %s failed for good", kind, job_id)
            await _failed(wctx, tenant, kind, job_id, f"It failed {job.attempts} times: {exc}")
            return "failed"
        raise  # saq tries again, with backoff


async def _failed(
    wctx: WorkerContext, tenant: TenantContext, kind: str, job_id: UUID, error: str
) -> None:
    runtime = wctx.runtime
    async with runtime.router.transaction(
        tenant, write=True, on_stale=runtime.refresh_tenant
    ) as session:
        outbox.act_as(session, outbox.SYSTEM)
        row = await repository.lock_job(session, _MODELS[kind], tenant.tenant_id, job_id)
        if row is None or row["state"] in FINISHED:
            return
        if kind == service.EXPORT:
            await exporter.fail(session, row, error)
        else:
            days = wctx.settings.transfer_retention_days
            await importer.close(session, row, "failed", error, retention_days=days)


async def _closed(wctx: WorkerContext, tenant: TenantContext, job_id: UUID) -> None:
    """A cancelled import's leftovers: its upload, its report kept for the retention."""
    runtime = wctx.runtime
    async with runtime.router.transaction(
        tenant, write=True, on_stale=runtime.refresh_tenant
    ) as session:
        row = await repository.lock_job(session, DataImport, tenant.tenant_id, job_id)
        if row is not None and row["state"] == "cancelled":
            days = wctx.settings.transfer_retention_days
            await importer.close(session, row, "cancelled", None, retention_days=days)


async def transfer_export(ctx: dict[str, Any], *, tenant_id: str, job_id: str) -> str:
    return await run_job(ctx, service.EXPORT, UUID(tenant_id), UUID(job_id))


async def transfer_import(ctx: dict[str, Any], *, tenant_id: str, job_id: str) -> str:
    return await run_job(ctx, service.IMPORT, UUID(tenant_id), UUID(job_id))


async def recover(wctx: WorkerContext) -> int:
    """Queue again every job whose worker went silent (deduped while saq holds it)."""
    runtime = wctx.runtime
    queued = 0
    for shard_id in sorted(runtime.engines.shards):
        try:
            pool = await runtime.engines.read_pool(shard_id)
            found = await repository.unfinished_on(
                pool, older_than=wctx.settings.transfer_stale_after, limit=RECOVER_BATCH
            )
        except Exception as exc:
            logger.warning("transfer recovery on shard %s failed: %s", shard_id, exc)
            continue
        for tenant_id, job_id, kind in found:
            if await jobs.enqueue(wctx.queue, kind, tenant_id, job_id):
                queued += 1
                logger.info("%s %s: queued again", kind, job_id)
    return queued


async def transfers_recover(ctx: dict[str, Any]) -> int:
    return await recover(context_of(ctx))


def plug(ctx: WorkerContext) -> WorkerPlug:
    return WorkerPlug(
        functions=[transfer_export, transfer_import],
        # Every 15 seconds (croniter's sixth field is seconds); unique across workers.
        cron_jobs=[CronJob(transfers_recover, cron="* * * * * */15", unique=True, timeout=60)],
    )
