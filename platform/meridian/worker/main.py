"""``meridian worker``: the relay, the event consumers and the job queue in one process.

What runs in it:

- the relay (``meridian.worker.relay``), every shard's outbox to the Redis stream;
- one reader per consumer group on that stream (``meridian.worker.consumers``), for
  each plug's consumers (webhook matching, projections, sagas);
- a saq worker for the jobs those enqueue (a webhook delivery and its retries, a saga
  step), and the periodic jobs (retention).

Retries and delays are saq's (jobs scheduled in Redis, exponential backoff with
jitter), not timers of ours: a job survives the worker that enqueued it, and any worker
takes it. Several ``meridian worker`` processes may run: the relay shares tenants by row
locks, consumer groups share entries, and saq shares jobs.

A plug is a domain's part (``WorkerPlug``): its consumers, its job functions and its
periodic jobs, built from the ``WorkerContext``; the composition is ``PLUGS`` below.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST as LATEST
from saq import CronJob, Queue, Worker

from meridian.events import bus
from meridian.events.jobs import queue_for
from meridian.health import exposition
from meridian.runtime import Runtime
from meridian.settings import Settings
from meridian.telemetry import Tracing
from meridian.web import targets
from meridian.worker.consumers import Consumer, GroupReader
from meridian.worker.relay import Relay
from meridian.worker.retention import prune_expired

logger = logging.getLogger("meridian.worker")
JobFunction = Callable[..., Awaitable[Any]]


@dataclass
class WorkerContext:
    """What a plug's consumers and jobs work with."""

    settings: Settings
    runtime: Runtime
    redis: bus.AnyRedis
    queue: Queue
    http: aiohttp.ClientSession


@dataclass
class WorkerPlug:
    consumers: Sequence[Consumer] = ()
    functions: Sequence[JobFunction] = ()
    cron_jobs: Sequence[CronJob[Any]] = ()


PlugFactory = Callable[[WorkerContext], WorkerPlug]
CONTEXT_KEY = "meridian"


def context_of(job_ctx: dict[str, Any]) -> WorkerContext:
    """In a saq job function (``async def f(ctx, **kwargs)``): the worker's context."""
    found: WorkerContext = job_ctx[CONTEXT_KEY]
    return found


def plugs() -> list[PlugFactory]:
    """The domains' worker parts (``meridian.worker.plugs``, the composition root)."""
    from meridian.worker.plugs import PLUGS

    return list(PLUGS)


@dataclass
class RunningWorker:
    """A started worker; ``stop()`` ends it (tests and ``meridian dev`` embed one)."""

    context: WorkerContext
    relay: Relay
    readers: list[GroupReader]
    jobs: Worker[Any]
    stop_event: asyncio.Event
    tracing: Tracing | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def stop(self) -> None:
        self.stop_event.set()
        await self.jobs.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.context.http.close()
        await self.context.queue.disconnect()
        await self.context.redis.aclose()
        await self.context.runtime.stop()
        if self.tracing is not None:
            self.tracing.close()  # sends what is still buffered


async def start_worker(settings: Settings, *, name: str | None = None) -> RunningWorker:
    if not settings.redis_url:
        raise RuntimeError("meridian worker needs Redis: set MERIDIAN_REDIS_URL")
    runtime = await Runtime.start(settings)
    redis = bus.connect(settings.redis_url, cluster=settings.redis_cluster)
    queue = queue_for(settings)
    await queue.connect()
    http = targets.outbound_session(allow_private=settings.webhook_allow_private_targets)
    ctx = WorkerContext(settings, runtime, redis, queue, http)
    name = name or f"{socket.gethostname()}-{os.getpid()}"
    parts = [factory(ctx) for factory in plugs()]

    async def retention(_: Any) -> int:
        return await prune_expired(runtime, default_days=settings.event_retention_days)

    functions: list[JobFunction] = [f for p in parts for f in p.functions]
    tracing = Tracing.of(settings, service="meridian-worker")
    if tracing is not None:
        tracing.instrument_drivers()
        functions = [tracing.traced(f) for f in functions]
    cron: list[CronJob[Any]] = [c for p in parts for c in p.cron_jobs]
    cron.append(CronJob(retention, cron="17 * * * *", unique=True))

    async def startup(job_ctx: dict[str, Any]) -> None:
        job_ctx[CONTEXT_KEY] = ctx

    jobs: Worker[Any] = Worker(
        queue,
        functions=functions,
        concurrency=settings.worker_concurrency,
        cron_jobs=cron,
        startup=startup,
    )
    # The process handles its own signals (the CLI); an embedded worker must not take
    # over its host's.
    jobs.SIGNALS = []
    stop = asyncio.Event()
    relay = Relay(
        runtime.engines,
        redis,
        batch=settings.event_relay_batch,
        stream_max=settings.event_stream_max,
    )
    readers = [
        GroupReader(
            redis,
            consumer,
            name,
            claim_idle=settings.event_claim_idle,
            max_deliveries=settings.event_max_deliveries,
        )
        for part in parts
        for consumer in part.consumers
    ]
    running = RunningWorker(ctx, relay, readers, jobs, stop, tracing)
    # The shards this process knows: the runtime re-reads the topology every 30 s.
    shards = lambda: sorted(runtime.engines.shards)  # noqa: E731
    running.tasks.append(
        asyncio.create_task(relay.run(shards, stop, settings.event_relay_interval))
    )
    running.tasks += [asyncio.create_task(r.run(stop)) for r in readers]
    running.tasks.append(asyncio.create_task(jobs.start()))
    logger.info(
        "worker %s started: %d consumer groups, %d job functions",
        name,
        len(readers),
        len(functions),
    )
    return running


async def run_worker(settings: Settings) -> None:
    """The ``meridian worker`` command: until SIGINT or SIGTERM."""
    import signal

    running = await start_worker(settings)
    metrics = None
    if settings.worker_metrics_port is not None:
        metrics = await serve_metrics(running.context.runtime, settings.worker_metrics_port)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, done.set)
    try:
        await done.wait()
    finally:
        if metrics is not None:
            await metrics.cleanup()
        await running.stop()


async def serve_metrics(
    runtime: Runtime,
    port: int,
    host: str = "0.0.0.0",  # noqa: S104 - scraped from outside
) -> web.AppRunner:
    """``GET /metrics`` of the worker on its own port (it serves no API): the same
    exposition as an API instance's."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=await exposition(runtime), headers={"Content-Type": LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    logger.info("worker metrics on %s:%d/metrics", host, port)
    return runner
