"""Queueing an export or an import as a saq job (from the API, and from the worker's
recovery job).

One job per export or import: its key dedupes, so the API and the recovery job can both
ask and saq keeps one. A job has no time limit (an import of millions of rows takes
long) but a heartbeat: the worker touches it after every chunk, and saq hands a job
whose worker went silent for ``HEARTBEAT`` seconds to another worker. The job's progress
is in the shard, so whoever runs it goes on from the last committed chunk.
"""

from __future__ import annotations

import logging
from uuid import UUID

from saq import Queue

EXPORT = "transfer_export"
IMPORT = "transfer_import"
FUNCTIONS = {"export": EXPORT, "import": IMPORT}
# Seconds without a heartbeat after which saq hands the job to another worker.
HEARTBEAT = 120
# Attempts of a job whose runs fail unexpectedly (a shard down, a bug); a worker that
# stops hands its job back without spending one (saq queues it again).
ATTEMPTS = 10
RETRY_DELAY = 1.0
RETRY_CAP = 60.0

logger = logging.getLogger("meridian.transfers")


def job_key(job_id: UUID) -> str:
    return f"transfer:{job_id}"


async def enqueue(queue: Queue, kind: str, tenant_id: UUID, job_id: UUID) -> bool:
    """Queue the job; False when saq already holds it. Redis down: logged, False (the
    worker's recovery job queues it once Redis is back)."""
    try:
        job = await queue.enqueue(
            FUNCTIONS[kind],
            key=job_key(job_id),
            timeout=0,
            heartbeat=HEARTBEAT,
            retries=ATTEMPTS,
            retry_delay=RETRY_DELAY,
            retry_backoff=RETRY_CAP,
            tenant_id=str(tenant_id),
            job_id=str(job_id),
        )
    except Exception as exc:  # the job waits in the shard for the recovery job
        logger.warning("%s %s not queued (the recovery job will): %s", kind, job_id, exc)
        return False
    return job is not None
