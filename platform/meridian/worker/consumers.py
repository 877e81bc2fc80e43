"""Consumer groups on the event stream: each group sees every event once, shared by the
workers that run it.

A consumer reads new entries with ``XREADGROUP``, hands each to its handler and
acknowledges it after the handler returns. A consumer with a batch handler gets a whole
read at once (one transaction per tenant instead of one per event, say); when the batch
fails, its entries are handled one by one, so one poisonous event holds up only itself.
Entries a dead consumer left unacknowledged are taken over with ``XAUTOCLAIM`` once
idle for ``claim_idle`` seconds; an entry delivered ``max_deliveries`` times without
success is logged and acknowledged, so one poisonous event cannot stall its group.
Handlers must be idempotent (the stream is at least once): they deduplicate by the
event's id, or recompute from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from redis.exceptions import ResponseError

from meridian.events import bus

logger = logging.getLogger("meridian.worker.consumers")

Handler = Callable[[UUID, dict[str, Any]], Awaitable[None]]
BatchHandler = Callable[[list[tuple[UUID, dict[str, Any]]]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Consumer:
    """A consumer group: its name, what it does with each event, and optionally with
    several at once (in stream order; the per-event handler is the fallback)."""

    group: str
    handle: Handler
    handle_batch: BatchHandler | None = None


class GroupReader:
    def __init__(
        self,
        redis: bus.AnyRedis,
        consumer: Consumer,
        name: str,
        *,
        claim_idle: float = 30.0,
        max_deliveries: int = 10,
        block_ms: int = 1_000,
        count: int = 100,
    ) -> None:
        self.redis = redis
        self.consumer = consumer
        self.name = name
        self.claim_idle_ms = int(claim_idle * 1000)
        self.max_deliveries = max_deliveries
        self.block_ms = block_ms
        self.count = count
        self.handled = 0
        # Entries are taken over once idle for claim_idle: looking for them on every
        # read (several a second under load) would cost a round trip each for nothing.
        self.reclaim_every = min(1.0, claim_idle / 4)
        self._reclaimed_at = 0.0

    async def ensure_group(self) -> None:
        try:
            # From the start of what the stream holds: events published before the
            # group existed are handled too.
            await self.redis.xgroup_create(bus.STREAM, self.consumer.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event) -> None:
        group = self.consumer.group
        ready = False
        while not stop.is_set():
            try:
                if not ready:
                    await self.ensure_group()
                    ready = True
                if time.monotonic() - self._reclaimed_at >= self.reclaim_every:
                    self._reclaimed_at = time.monotonic()
                    await self._reclaim()
                answer: Any = await self.redis.xreadgroup(
                    group, self.name, {bus.STREAM: ">"}, count=self.count, block=self.block_ms
                )
                for _stream, entries in answer or []:
                    await self._handle_read(entries)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Redis down or a group lost with a flushed Redis: wait and start over.
                logger.warning("consumer %s/%s: %s", group, self.name, exc)
                ready = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def _reclaim(self) -> None:
        """Take over what consumers that died left pending, and set aside poison."""
        group = self.consumer.group
        result = await self.redis.xautoclaim(
            bus.STREAM, group, self.name, min_idle_time=self.claim_idle_ms, count=self.count
        )
        claimed = result[1] if result else []
        for entry_id, fields in claimed:
            if fields is None:
                await self.redis.xack(bus.STREAM, group, entry_id)  # trimmed away
                continue
            pending = await self.redis.xpending_range(
                bus.STREAM, group, min=entry_id, max=entry_id, count=1
            )
            deliveries = int(pending[0]["times_delivered"]) if pending else 0
            if deliveries > self.max_deliveries:
                logger.error(
                    "consumer %s: event entry %s failed %d times; set aside",
                    group,
                    entry_id,
                    deliveries,
                )
                await self.redis.xack(bus.STREAM, group, entry_id)
                continue
            await self._handle(entry_id, fields)

    async def _handle_read(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        batch = self.consumer.handle_batch
        if batch is None or len(entries) < 2:
            # One acknowledgement for the read's handled entries: a worker that dies
            # before it leaves them pending, and idempotent handlers see them again.
            done = [i for i, fields in entries if await self._handle(i, fields, ack=False)]
            if done:
                await self.redis.xack(bus.STREAM, self.consumer.group, *done)
            return
        try:
            await batch([bus.decode(fields) for _id, fields in entries])
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning(
                "consumer %s: a batch of %d failed; handling them one by one",
                self.consumer.group,
                len(entries),
                exc_info=True,
            )
            for entry_id, fields in entries:
                await self._handle(entry_id, fields)
            return
        await self.redis.xack(bus.STREAM, self.consumer.group, *[i for i, _f in entries])
        self.handled += len(entries)

    async def _handle(
        self, entry_id: bytes, fields: dict[bytes, bytes], *, ack: bool = True
    ) -> bool:
        """Whether the handler succeeded (and, with ``ack``, the entry is acknowledged)."""
        tenant_id, event = bus.decode(fields)
        try:
            await self.consumer.handle(tenant_id, event)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Left pending: redelivered by XAUTOCLAIM after claim_idle.
            logger.exception(
                "consumer %s: event %s (%s) failed",
                self.consumer.group,
                event.get("id"),
                event.get("type"),
            )
            return False
        if ack:
            await self.redis.xack(bus.STREAM, self.consumer.group, entry_id)
        self.handled += 1
        return True
