"""Lead scoring in the worker: after a change of a tenant's scoring rules, every lead of
the tenant is scored again (the ``lead-scoring`` consumer group).

Each batch of leads is its own transaction (``LeadService.rescore_page``), so a large
tenant's rescoring holds no long lock and a crash loses at most the batch in flight;
the event is acknowledged once all batches are done, so a rescoring cut short is run
again from the start, which changes only the leads still wrong. Several changes in a
row rescore several times; each pass ends with the rules as they then are.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from meridian.crud.endpoints import invalidate_written
from meridian.crud.repository import written
from meridian.events import outbox
from meridian.leads.service import lead as lead_service
from meridian.worker.consumers import Consumer
from meridian.worker.main import WorkerContext, WorkerPlug

logger = logging.getLogger("meridian.leads")
GROUP = "lead-scoring"
RULE_EVENTS = frozenset(
    f"lead_scoring_rule.{action}" for action in ("created", "updated", "deleted")
)


async def rescore_tenant(wctx: WorkerContext, tenant_id: UUID) -> int:
    """Every lead of the tenant scored again; returns how many changed."""
    runtime = wctx.runtime
    tenant = await runtime.directory.resolve(tenant_id)
    if tenant is None:
        return 0
    total, after = 0, None
    while True:
        async with runtime.router.transaction(
            tenant, write=True, on_stale=runtime.refresh_tenant
        ) as session:
            outbox.act_as(session, outbox.SYSTEM)
            changed, after = await lead_service.rescore_page(session, tenant, after)
        await invalidate_written(runtime, tenant_id, written(session))
        total += changed
        if after is None:
            return total


def plug(ctx: WorkerContext) -> WorkerPlug:
    async def handle(tenant_id: UUID, event: dict[str, Any]) -> None:
        if event.get("type") in RULE_EVENTS:
            changed = await rescore_tenant(ctx, tenant_id)
            logger.info("rescored leads", extra={"tenant": str(tenant_id), "changed": changed})

    return WorkerPlug(consumers=[Consumer(GROUP, handle)])
