"""The webhooks' part of ``meridian worker``: the consumer group ``webhooks`` matches each
event with its tenant's enabled subscriptions and makes their deliveries; the job
``webhook_deliver`` (``meridian.webhooks.delivery``) sends them.

A delivery row is written before its job is enqueued, in the consumer's transaction, and
the event is acknowledged after both: a worker that dies in between leaves the event
pending, the next reader makes nothing twice (the live deliveries' unique key) and
enqueues what is still waiting (the job keys make that a no-op for jobs already queued).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from meridian.ids import new_id
from meridian.webhooks.delivery import enqueue, webhook_deliver
from meridian.webhooks.repository import DeliveryRepository, WebhookRepository
from meridian.webhooks.service import matches
from meridian.worker.consumers import Consumer
from meridian.worker.main import WorkerContext, WorkerPlug

GROUP = "webhooks"


async def match_event(wctx: WorkerContext, tenant_id: UUID, event: dict[str, Any]) -> int:
    """The deliveries of one event (only to its own tenant's subscriptions); how many
    were handed to the queue."""
    runtime = wctx.runtime
    tenant = await runtime.directory.resolve(tenant_id)
    if tenant is None:
        return 0  # deleted since
    async with runtime.router.reader(tenant, on_stale=runtime.refresh_tenant) as conn:
        if not await WebhookRepository.any_enabled(conn, tenant_id):
            return 0
    async with runtime.router.transaction(
        tenant, write=True, on_stale=runtime.refresh_tenant
    ) as session:
        subscriptions = await WebhookRepository(session, tenant).enabled()
        matched = [s["id"] for s in subscriptions if matches(s, event)]
        if not matched:
            return 0
        deliveries = DeliveryRepository(session, tenant)
        await deliveries.add_live(matched, event, [new_id() for _ in matched])
        waiting = await deliveries.waiting(UUID(str(event["id"])), matched)
    for delivery_id in waiting:
        await enqueue(wctx.queue, wctx.settings, tenant_id, delivery_id)
    return len(waiting)


def plug(wctx: WorkerContext) -> WorkerPlug:
    async def handle(tenant_id: UUID, event: dict[str, Any]) -> None:
        await match_event(wctx, tenant_id, event)

    return WorkerPlug(consumers=[Consumer(GROUP, handle)], functions=[webhook_deliver])
