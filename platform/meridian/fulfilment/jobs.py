"""Queueing a saga's next call as a saq job (from the worker, and from the API's retry).

One job per (saga, phase, step): its key dedupes, so the consumer, the job before it, a
retry request and the recovery job can all ask for it and saq keeps one. A failed
attempt is retried by saq itself (the job raises), with exponential backoff and jitter
from ``MERIDIAN_FULFILMENT_RETRY_DELAY`` up to ``MERIDIAN_FULFILMENT_RETRY_CAP``.
"""

from __future__ import annotations

from uuid import UUID

from saq import Queue

from meridian.fulfilment.service import Phase, Saga
from meridian.settings import Settings

ADVANCE = "saga_advance"
# Beyond a call's own timeout: the two short transactions around it.
JOB_MARGIN = 15


def job_key(saga_id: UUID, phase: Phase, position: int) -> str:
    return f"{ADVANCE}:{saga_id}:{phase}:{position}"


async def enqueue_advance(
    queue: Queue, settings: Settings, tenant_id: UUID, saga: Saga, phase: Phase, position: int
) -> bool:
    """Queue the call the saga waits for; False when saq already holds that job."""
    step = saga.steps[position]
    job = await queue.enqueue(
        ADVANCE,
        key=job_key(saga.id, phase, position),
        timeout=int(step.timeout) + JOB_MARGIN,
        retries=step.max_attempts,
        retry_delay=settings.fulfilment_retry_delay,
        retry_backoff=settings.fulfilment_retry_cap,
        tenant_id=str(tenant_id),
        saga_id=str(saga.id),
        phase=phase,
        position=position,
    )
    return job is not None


async def enqueue_current(queue: Queue, settings: Settings, tenant_id: UUID, saga: Saga) -> bool:
    """Queue whatever the saga waits for (nothing once it ended)."""
    current = saga.current()
    if current is None:
        return False
    return await enqueue_advance(queue, settings, tenant_id, saga, *current)
