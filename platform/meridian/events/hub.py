"""The live streams' share of the broker: one reader of the Redis stream per API process,
handing each entry to the streams of its tenant that this process serves.

The reader starts with the first stream (``EventHub.subscribe``) and stops once nobody
streams, so an instance without streams holds no blocking connection. It reads with its
own client (``bus.connect``): the runtime's client gives up after 1 s, shorter than a
block. Each stream gets a bounded queue; a stream whose client cannot keep up is closed
with a reason (``Subscription.closed``) instead of blocking the reader or growing memory,
and resumes without a gap when its client reconnects with ``Last-Event-ID``.

The hub is a transport, never the record: a stream reads the log (``meridian.events.log``)
for its catch-up, for any seq the hub skipped (``epoch`` changes whenever the reader
starts reading again, from the stream's tail), and every second while the hub is down.

``StreamLeases`` counts the open streams of each tenant across instances (a sorted set per
tenant in Redis, one member per stream whose score is its lease's expiry), and per process
when Redis cannot answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson

from meridian.events import bus
from meridian.settings import Settings

logger = logging.getLogger("meridian.events.hub")

# Why a stream was closed by the hub (sent to its client before the stream ends).
TOO_SLOW = "too_slow"
SHUTDOWN = "shutdown"


@dataclass(eq=False)
class Subscription:
    """One stream's view of the hub: the entries of its tenant, in stream order.

    A deque and an event rather than an ``asyncio.Queue``: waiting on an event with a
    timeout can never lose an entry (a ``get()`` cancelled by its timeout just as it
    completes can, before Python 3.12)."""

    tenant_id: UUID
    limit: int
    items: deque[dict[str, Any]] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Set by the hub when it drops the stream (TOO_SLOW, SHUTDOWN).
    closed: str | None = None

    def take(self) -> list[dict[str, Any]]:
        """Everything delivered since the last take (no await: nothing slips between)."""
        self.ready.clear()
        taken = list(self.items)
        self.items.clear()
        return taken


class EventHub:
    """The process's reader of ``bus.STREAM`` and its tenants' subscriptions."""

    def __init__(
        self,
        redis_url: str | None,
        *,
        cluster: bool = False,
        queue_size: int = 1000,
        block_ms: int = 5_000,
        retry_after: float = 1.0,
    ) -> None:
        self.redis_url = redis_url
        self.cluster = cluster
        self.queue_size = queue_size
        self.block_ms = block_ms
        self.retry_after = retry_after
        self._subscribers: dict[bytes, set[Subscription]] = {}
        self._redis: bus.AnyRedis | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # True while the reader reads; epoch counts the times it started reading from the
        # tail, so a stream knows when entries may have passed it by.
        self.live = False
        self.epoch = 0
        self.delivered = 0

    # -- streams --------------------------------------------------------------------
    def subscribe(self, tenant_id: UUID) -> Subscription:
        sub = Subscription(tenant_id, self.queue_size)
        if self._closing:
            sub.closed = SHUTDOWN
            return sub
        self._subscribers.setdefault(str(tenant_id).encode(), set()).add(sub)
        self._ensure_reading()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        key = str(sub.tenant_id).encode()
        subs = self._subscribers.get(key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[key]

    @contextlib.asynccontextmanager
    async def subscription(self, tenant_id: UUID) -> AsyncIterator[Subscription]:
        sub = self.subscribe(tenant_id)
        try:
            yield sub
        finally:
            self.unsubscribe(sub)

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def _close(self, sub: Subscription, reason: str) -> None:
        self.unsubscribe(sub)
        sub.closed = reason
        sub.items.clear()
        sub.ready.set()

    def _dispatch(self, fields: dict[bytes, bytes]) -> None:
        subs = self._subscribers.get(fields.get(b"tenant", b""))
        if not subs:
            return
        # Decoded once for all of the tenant's streams here, which only read it.
        event: dict[str, Any] = orjson.loads(fields[b"event"])
        for sub in list(subs):
            if len(sub.items) >= sub.limit:
                logger.info("stream of tenant %s closed: too slow", sub.tenant_id)
                self._close(sub, TOO_SLOW)
            else:
                sub.items.append(event)
                sub.ready.set()
                self.delivered += 1

    # -- the reader -----------------------------------------------------------------
    def _ensure_reading(self) -> None:
        if self.redis_url is None or self._closing:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._read(), name="meridian-event-hub")

    async def _tail(self, redis: bus.AnyRedis) -> bytes | str:
        """The id of the stream's newest entry: reading after it misses nothing
        published once it is known (``$`` would, between two reads)."""
        newest: Any = await redis.xrevrange(bus.STREAM, count=1)
        return newest[0][0] if newest else "0-0"

    async def _read(self) -> None:
        position: bytes | str | None = None
        while not self._closing:
            if not self._subscribers:
                # Nobody streams: the reader ends (no await since the check, so a new
                # subscriber either finds this task done or was seen here).
                self.live = False
                return
            try:
                if self._redis is None:
                    assert self.redis_url is not None
                    self._redis = bus.connect(self.redis_url, cluster=self.cluster)
                if position is None:
                    position = await self._tail(self._redis)
                    self.epoch += 1
                    self.live = True
                answer: Any = await self._redis.xread(
                    {bus.STREAM: position}, count=500, block=self.block_ms
                )
                for _stream, entries in answer or []:
                    for entry_id, fields in entries:
                        position = entry_id
                        self._dispatch(fields)
            except asyncio.CancelledError:
                self.live = False
                raise
            except Exception as exc:
                # Redis down, or the stream flushed: the streams poll the log meanwhile;
                # reading starts again from the tail (what was missed is in the log).
                if self.live:
                    logger.warning("event hub: %s; streams poll the log", exc)
                self.live = False
                position = None
                await asyncio.sleep(self.retry_after)
        self.live = False

    async def close(self) -> None:
        """At shutdown: the streams end (their clients reconnect elsewhere)."""
        self._closing = True
        for subs in list(self._subscribers.values()):
            for sub in list(subs):
                self._close(sub, SHUTDOWN)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


# -- the per-tenant limit ------------------------------------------------------------
# Add a lease if the tenant holds fewer than the limit (after dropping lapsed ones):
# 1, or 0 and the earliest expiry. One script: instances cannot both take the last place.
ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, first[2]}
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, ARGV[2]}
"""


def leases_key(tenant_id: UUID) -> str:
    # The cache's tenant hash tag: on a Redis Cluster the key lives with the tenant's.
    return f"m:{{t:{tenant_id}}}:streams"


@dataclass(frozen=True, slots=True)
class Refused:
    """Over the limit: when a lease may lapse, in seconds (a hint for Retry-After)."""

    retry_after: int


@dataclass
class StreamLeases:
    """At most ``limit`` open streams per tenant: across instances through Redis, per
    process while Redis cannot answer (never an error)."""

    redis: Any  # the runtime's client (short timeouts), or None
    limit: int
    ttl: float
    # Every lease of this process, whatever Redis said: tenant -> {stream id: expiry}.
    local: dict[UUID, dict[str, float]] = field(default_factory=dict)
    _releasing: set[asyncio.Task[None]] = field(default_factory=set)

    def _local_count(self, tenant_id: UUID, now: float) -> int:
        held = self.local.get(tenant_id, {})
        for stream_id in [s for s, exp in held.items() if exp <= now]:
            del held[stream_id]
        return len(held)

    async def acquire(self, tenant_id: UUID, stream_id: str) -> Refused | None:
        now = time.time()
        expiry = now + self.ttl
        taken: bool | None = None
        retry = math.ceil(self.ttl)
        if self.redis is not None:
            try:
                answer: Any = await self.redis.eval(
                    ACQUIRE,
                    1,
                    leases_key(tenant_id),
                    now,
                    expiry,
                    self.limit,
                    stream_id,
                    math.ceil(self.ttl * 1000),
                )
                taken = int(answer[0]) == 1
                if not taken:
                    retry = math.ceil(float(answer[1]) - now)
            except Exception as exc:
                logger.warning("stream leases: %s; counted in this process", exc)
        if taken is None:
            taken = self._local_count(tenant_id, now) < self.limit
        if not taken:
            return Refused(max(1, min(retry, math.ceil(self.ttl))))
        self.local.setdefault(tenant_id, {})[stream_id] = expiry
        return None

    async def refresh(self, tenant_id: UUID, stream_id: str) -> None:
        expiry = time.time() + self.ttl
        held = self.local.get(tenant_id)
        if held is not None and stream_id in held:
            held[stream_id] = expiry
        if self.redis is None:
            return
        try:
            # Upsert: a lease taken while Redis was down is counted there once it is back.
            key = leases_key(tenant_id)
            await self.redis.zadd(key, {stream_id: expiry})
            await self.redis.pexpire(key, math.ceil(self.ttl * 1000))
        except Exception as exc:
            logger.debug("stream lease refresh: %s", exc)

    def release(self, tenant_id: UUID, stream_id: str) -> None:
        """Called as a stream ends, often while it is being cancelled (its client went
        away): the local lease goes at once, the Redis one in a task of its own, which
        the cancellation cannot cut short (if it fails, the lease lapses in ``ttl``)."""
        held = self.local.get(tenant_id)
        if held is not None:
            held.pop(stream_id, None)
            if not held:
                del self.local[tenant_id]
        if self.redis is None:
            return
        task = asyncio.create_task(self._release(tenant_id, stream_id))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, tenant_id: UUID, stream_id: str) -> None:
        try:
            await self.redis.zrem(leases_key(tenant_id), stream_id)
        except Exception as exc:
            logger.debug("stream lease release: %s", exc)


@dataclass
class LiveStreams:
    """What ``GET /v1/stream`` needs of its process: the hub, the leases, the heartbeat.
    Built at the app's start (cheap: the hub reads only while someone streams)."""

    hub: EventHub
    leases: StreamLeases
    heartbeat: float

    @classmethod
    def build(cls, settings: Settings, redis: Any) -> LiveStreams:
        hub = EventHub(
            settings.redis_url, cluster=settings.redis_cluster, queue_size=settings.stream_buffer
        )
        # A lease outlives a few missed heartbeats, and lapses soon after its process died.
        ttl = max(3 * settings.stream_heartbeat, 2.0)
        leases = StreamLeases(redis, settings.stream_max_per_tenant, ttl)
        return cls(hub, leases, settings.stream_heartbeat)

    async def close(self) -> None:
        await self.hub.close()
