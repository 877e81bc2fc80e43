"""The job queue (saq on Redis) the workers run and the API hands work to (a webhook
delivery retried or replayed): one name, one way to reach it. Kit: the worker's
composition (``meridian.worker.main``) and the request dependencies both use it."""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from saq import Job
from saq.queue.redis import RedisQueue

from meridian.settings import Settings

QUEUE = "meridian"
# How long a worker's job loops wait before asking a Redis that refused them again.
REDIS_DOWN_PAUSE = 1.0

logger = logging.getLogger("meridian.events.jobs")


class PatientQueue(RedisQueue):
    """saq's Redis queue, pausing when Redis is unreachable.

    saq's worker asks for the next job again as soon as asking fails, without a log
    line, in each of its ``concurrency`` loops: with Redis down that is a busy loop of
    connection attempts (measured: a worker at 50 % of a core for as long as Redis was
    gone). Here a failed ask waits ``REDIS_DOWN_PAUSE`` and answers "no job", so the
    loops retry once a second until Redis is back.
    """

    # saq's signature, which its worker calls.
    async def dequeue(
        self,
        timeout: float = 0.0,  # noqa: ASYNC109
        poll_interval: float = 0.0,
    ) -> Job | None:
        try:
            return await super().dequeue(timeout=timeout, poll_interval=poll_interval)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            logger.debug("job queue unreachable: %s", exc)
            await asyncio.sleep(REDIS_DOWN_PAUSE)
            return None


def queue_for(settings: Settings) -> PatientQueue:
    if not settings.redis_url:
        raise RuntimeError("events need Redis: set MERIDIAN_REDIS_URL")
    return PatientQueue(Redis.from_url(settings.redis_url), name=QUEUE)
