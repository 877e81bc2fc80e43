"""The webhooks' part of ``meridian worker``: the consumer group ``webhooks`` matches each
event with its tenant's enabled subscriptions and makes their deliveries; the job
``webhook_deliver`` (``meridian.webhooks.delivery``) sends them.

Events come in batches (a read of the stream), matched in one transaction per tenant.
A delivery row is written before its job is enqueued, in the consumer's transaction, and
the event is acknowledged after both: a worker that dies in between leaves the event
pending, the next reader makes nothing twice (the live deliveries' unique key) and
enqueues what is still waiting (the job keys make that a no-op for jobs already queued).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from meridian.ids import new_id
from meridian.webhooks.delivery import enqueue, webhook_deliver
from meridian.webhooks.repository import DeliveryRepository, WebhookRepository
from meridian.webhooks.service import matches
from meridian.worker.consumers import Consumer
from meridian.worker.main import WorkerContext, WorkerPlug

GROUP = "webhooks"


async def match_events(
    wctx: WorkerContext, tenant_id: UUID, events: Sequence[dict[str, Any]]
) -> int:
    """The deliveries of one tenant's events (only to its own subscriptions), made in
    one transaction; how many were handed to the queue."""
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
        matched = [(s["id"], e) for e in events for s in subscriptions if matches(s, e)]
        if not matched:
            return 0
        deliveries = DeliveryRepository(session, tenant)
        await deliveries.add_live(matched, [new_id() for _ in matched])
        waiting = await deliveries.waiting(
            list(dict.fromkeys(UUID(str(e["id"])) for _s, e in matched)),
            list(dict.fromkeys(s for s, _e in matched)),
        )
    # Each enqueue is a round trip to Redis; they need not wait for each other.
    await asyncio.gather(*(enqueue(wctx.queue, wctx.settings, tenant_id, d) for d in waiting))
    return len(waiting)


def plug(wctx: WorkerContext) -> WorkerPlug:
    async def handle(tenant_id: UUID, event: dict[str, Any]) -> None:
        await match_events(wctx, tenant_id, [event])

    async def handle_batch(events: list[tuple[UUID, dict[str, Any]]]) -> None:
        by_tenant: dict[UUID, list[dict[str, Any]]] = {}
        for tenant_id, event in events:
            by_tenant.setdefault(tenant_id, []).append(event)
        for tenant_id, theirs in by_tenant.items():
            await match_events(wctx, tenant_id, theirs)

    return WorkerPlug(
        consumers=[Consumer(GROUP, handle, handle_batch)], functions=[webhook_deliver]
    )
