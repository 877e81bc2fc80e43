"""The job queue with Redis unreachable: a worker's job loops wait instead of spinning."""

from __future__ import annotations

import socket
import time

from meridian.events.jobs import REDIS_DOWN_PAUSE, queue_for
from meridian.settings import Settings


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_asking_a_dead_redis_for_a_job_pauses_and_answers_none(settings: Settings) -> None:
    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed_port()}/0"})
    queue = queue_for(dead)
    started = time.monotonic()
    assert await queue.dequeue(timeout=0) is None
    # The pause is the point (saq asks again at once otherwise): at least most of it.
    assert time.monotonic() - started >= REDIS_DOWN_PAUSE * 0.5
