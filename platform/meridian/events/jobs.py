"""The job queue (saq on Redis) the workers run and the API hands work to (a webhook
delivery retried or replayed): one name, one way to reach it. Kit: the worker's
composition (``meridian.worker.main``) and the request dependencies both use it."""

from __future__ import annotations

from saq import Queue

from meridian.settings import Settings

QUEUE = "meridian"


def queue_for(settings: Settings) -> Queue:
    if not settings.redis_url:
        raise RuntimeError("events need Redis: set MERIDIAN_REDIS_URL")
    return Queue.from_url(settings.redis_url, name=QUEUE)
