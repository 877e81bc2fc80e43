"""The fulfilment saga in the worker: the ``sagas`` consumer group, the ``saga_advance``
job that makes one call of a step, and the ``saga_recover`` job that restarts sagas
whose job was lost.

``opportunity.won`` starts a saga with the tenant's steps as they are then (none
configured: no saga); the won event's id is the saga's unique key, so a redelivered
event starts nothing twice. ``saga_advance`` locks the saga, marks the call begun and
commits; makes the call outside any transaction; then locks the saga again and records
the outcome (and the events) and queues what follows. State is in the shard after every
transition, so a worker that stops loses at most the call it was making: saq hands the
job to another worker (a job cancelled by a stopping worker is queued again; one whose
worker died is swept after its timeout), and ``saga_recover`` (every few seconds, any
worker) queues the current call of every unfinished saga again, which the job key dedupes
while saq still holds a job for it.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from saq import CronJob

from meridian.events import outbox
from meridian.fulfilment import calls, service
from meridian.fulfilment.jobs import enqueue_advance, enqueue_current
from meridian.fulfilment.repository import SagaRepository, StepsRepository, unfinished_on
from meridian.fulfilment.service import Phase
from meridian.worker.consumers import Consumer
from meridian.worker.main import WorkerContext, WorkerPlug, context_of

logger = logging.getLogger("meridian.fulfilment")
GROUP = "sagas"
# Sagas younger than this are left to the jobs that are running them.
RECOVER_AFTER = 5.0
RECOVER_BATCH = 500


class AttemptFailed(Exception):
    """A call failed with attempts left: raised so that saq retries the job."""


async def start_saga(wctx: WorkerContext, tenant_id: UUID, event: dict[str, Any]) -> None:
    """The ``sagas`` group's handler."""
    won = service.won_opportunity(event)
    if won is None:
        return
    event_id, opportunity = won
    runtime = wctx.runtime
    tenant = await runtime.directory.resolve(tenant_id)
    if tenant is None:
        return
    settings = wctx.settings
    async with runtime.router.transaction(
        tenant, write=True, on_stale=runtime.refresh_tenant
    ) as session:
        outbox.act_as(session, outbox.SYSTEM)
        config = await StepsRepository(session, tenant).current()
        if config is None or not config["steps"]:
            return  # the tenant runs no fulfilment
        saga, made = await SagaRepository(session, tenant).create(
            won_event_id=event_id,
            opportunity=opportunity,
            config_version=config["version"],
            steps=config["steps"],
            default_timeout=settings.fulfilment_step_timeout,
            default_attempts=settings.fulfilment_step_attempts,
        )
    if made:
        logger.info("saga %s started for opportunity %s", saga.id, saga.opportunity_id)
    # A redelivery of an event whose saga exists: its current call is queued again, which
    # saq dedupes if it still holds the job (the first delivery may have stopped between
    # the commit and this).
    await enqueue_current(wctx.queue, settings, tenant_id, saga)


async def saga_advance(
    ctx: dict[str, Any], *, tenant_id: str, saga_id: str, phase: Phase, position: int
) -> str:
    """One call of the step at ``position`` in ``phase``, and its outcome recorded."""
    wctx = context_of(ctx)
    runtime = wctx.runtime
    tid, sid = UUID(tenant_id), UUID(saga_id)
    tenant = await runtime.directory.resolve(tid)
    if tenant is None:
        return "no such tenant"
    async with runtime.router.transaction(
        tenant, write=True, on_stale=runtime.refresh_tenant
    ) as session:
        repo = SagaRepository(session, tenant)
        saga = await repo.load(sid, lock=True)
        attempt = service.begin(saga, tid, phase, position) if saga is not None else None
        if saga is not None and attempt is not None:
            await repo.save(saga, [saga.steps[position]])
    if attempt is None:
        return "stale"
    outcome = await calls.call(
        wctx.http, attempt, allow_private=wctx.settings.webhook_allow_private_targets
    )
    async with runtime.router.transaction(
        tenant, write=True, on_stale=runtime.refresh_tenant
    ) as session:
        outbox.act_as(session, outbox.SYSTEM)
        repo = SagaRepository(session, tenant)
        saga = await repo.load(sid, lock=True)
        if saga is None:
            return "gone"
        transition = service.record(saga, attempt, outcome)
        if not transition.stale:
            await repo.save(saga, transition.changed)
            for action, data in transition.events:
                repo.emit(saga, action, data)
    if transition.stale:
        return "stale"
    if transition.next is not None:
        await enqueue_advance(wctx.queue, wctx.settings, tid, saga, *transition.next)
    if transition.retry:
        raise AttemptFailed(f"{attempt.name} ({phase}) attempt {attempt.number}: {outcome.error}")
    return saga.state


async def recover(wctx: WorkerContext) -> int:
    """Queue the current call of every unfinished saga again (deduped by saq)."""
    runtime = wctx.runtime
    queued = 0
    for shard_id in sorted(runtime.engines.shards):
        try:
            pool = await runtime.engines.read_pool(shard_id)
            found = await unfinished_on(pool, older_than=RECOVER_AFTER, limit=RECOVER_BATCH)
        except Exception as exc:
            logger.warning("saga recovery on shard %s failed: %s", shard_id, exc)
            continue
        for tenant_id, saga_id in found:
            try:
                tenant = await runtime.directory.resolve(tenant_id)
                if tenant is None:
                    continue
                async with runtime.router.reader(tenant, on_stale=runtime.refresh_tenant) as conn:
                    saga = await SagaRepository.read_one(conn, tenant_id, saga_id)
                if saga is not None and await enqueue_current(
                    wctx.queue, wctx.settings, tenant_id, saga
                ):
                    queued += 1
                    logger.info("saga %s: its call queued again", saga_id)
            except Exception as exc:
                logger.warning("saga %s not recovered: %s", saga_id, exc)
    return queued


async def saga_recover(ctx: dict[str, Any]) -> int:
    return await recover(context_of(ctx))


def plug(ctx: WorkerContext) -> WorkerPlug:
    async def handle(tenant_id: UUID, event: dict[str, Any]) -> None:
        await start_saga(ctx, tenant_id, event)

    return WorkerPlug(
        consumers=[Consumer(GROUP, handle)],
        functions=[saga_advance],
        # Every 10 seconds (croniter's sixth field is seconds); unique across workers.
        cron_jobs=[CronJob(saga_recover, cron="* * * * * */10", unique=True, timeout=60)],
    )
