"""The relay: each shard's outbox to the broker, in each tenant's order, once.

Every pass over a shard asks which tenants have events to number or beyond what was
relayed (one query across tenants: ``meridian_pending_tenants`` names those with events
waiting for their numbers, the counters under ``app.relay`` those numbered and not yet
published), then for each

- numbers what waits (``meridian.events.log.number``, in a transaction of its own, so a
  reader of the log numbering too waits for it only that long), and
- drains the numbered events in a transaction that

1. enters the tenant like a writer (``meridian_relay_enter``: the residency row FOR
   SHARE), so a move's fence waits for a relay pass and then keeps it out, and a tenant
   that has left the shard is skipped;
2. locks the tenant's ``event_relay`` row FOR UPDATE SKIP LOCKED: several relays (one per
   worker process) share the tenants, and one tenant is drained by one relay at a time,
   which is what keeps its events in order on the stream;
3. reads the events after ``relayed_seq``, publishes them, records the new position, and
   commits.

A relay killed between publishing and committing leaves the position where it was, and
the next pass publishes those events again: at least once, never a gap (numbers are
handed out in the order events became visible, see ``meridian.events.outbox``). Redis
down: nothing is recorded as relayed, so the passes resume where they stopped once it is
back; the API's writes never wait for the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from meridian.events import bus, log
from meridian.events.outbox import NUMBER_BATCH
from sharding.engines import ShardEngines

logger = logging.getLogger("meridian.worker.relay")

PENDING = """
SELECT s.tenant_id
  FROM event_sequence s
  LEFT JOIN event_relay r ON r.tenant_id = s.tenant_id
 WHERE s.last_seq > COALESCE(r.relayed_seq, 0)
 LIMIT $1
"""
WAITING = "SELECT t FROM meridian_pending_tenants($1) AS t"
CLAIM = "SELECT relayed_seq FROM event_relay WHERE tenant_id = $1 FOR UPDATE SKIP LOCKED"
# The column names are the model's, not input.
BATCH = f"""
SELECT {", ".join(c.key for c in log.COLUMNS)}
  FROM event_outbox
 WHERE tenant_id = $1 AND seq > $2
 ORDER BY seq
 LIMIT $3
"""  # noqa: S608
MOVED_OR_FENCED = {"MR001", "MR002", "MR003"}
FAILURE_PAUSE = 1.0


@dataclass
class RelayStats:
    published: int = 0
    passes: int = 0


class Relay:
    def __init__(
        self,
        engines: ShardEngines,
        redis: bus.AnyRedis,
        *,
        batch: int = 500,
        stream_max: int = 200_000,
        tenants_per_pass: int = 200,
    ) -> None:
        self.engines = engines
        self.redis = redis
        self.batch = batch
        self.stream_max = stream_max
        self.tenants_per_pass = tenants_per_pass
        self.stats = RelayStats()

    async def pending_tenants(self, shard_id: str) -> list[UUID]:
        pool = await self.engines.read_pool(shard_id)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL app.relay = 'on'")
            rows = await conn.fetch(PENDING, self.tenants_per_pass)
            waiting = await conn.fetch(WAITING, self.tenants_per_pass)
        return list(dict.fromkeys([r[0] for r in rows] + [r[0] for r in waiting]))

    async def relay_shard(self, shard_id: str) -> int:
        """One pass over a shard; the number of events published."""
        self.stats.passes += 1
        total = 0
        for tenant_id in await self.pending_tenants(shard_id):
            total += await self.relay_tenant(shard_id, tenant_id)
        return total

    async def relay_tenant(self, shard_id: str, tenant_id: UUID) -> int:
        pool = await self.engines.read_pool(shard_id)
        published = 0
        async with pool.acquire() as conn:
            while True:
                numbered = await self._number(conn, tenant_id)
                count = await self._drain(conn, tenant_id)
                published += count
                if count < self.batch and numbered < NUMBER_BATCH:
                    break
        self.stats.published += published
        return published

    async def _number(self, conn: asyncpg.Connection, tenant_id: UUID) -> int:
        async with conn.transaction():
            if not await _enter(conn, tenant_id):
                return 0
            return await log.number(conn, tenant_id)

    async def _drain(self, conn: asyncpg.Connection, tenant_id: UUID) -> int:
        async with conn.transaction():
            if not await _enter(conn, tenant_id):
                return 0
            await conn.execute(
                "INSERT INTO event_relay (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING",
                tenant_id,
            )
            position = await conn.fetchval(CLAIM, tenant_id)
            if position is None:
                return 0  # another relay is draining this tenant
            rows = await conn.fetch(BATCH, tenant_id, position, self.batch)
            if not rows:
                return 0
            events = [log.public(dict(r)) for r in rows]
            await bus.publish(self.redis, tenant_id, events, maxlen=self.stream_max)
            await conn.execute(
                "UPDATE event_relay SET relayed_seq = $2, relayed_at = now() WHERE tenant_id = $1",
                tenant_id,
                rows[-1]["seq"],
            )
            return len(rows)

    async def run(
        self, shards: Callable[[], Sequence[str]], stop: asyncio.Event, interval: float
    ) -> None:
        """Pass over every shard (``shards()``, asked each pass: the topology changes)
        until ``stop``; a shard or Redis that fails is retried on the next pass without
        holding the others."""
        while not stop.is_set():
            shard_ids = list(shards())
            results: list[Any] = await asyncio.gather(
                *(self.relay_shard(s) for s in shard_ids), return_exceptions=True
            )
            for shard_id, result in zip(shard_ids, results, strict=True):
                if isinstance(result, BaseException):
                    logger.warning("relay pass on shard %s failed: %s", shard_id, result)
            busy = any(isinstance(r, int) and r > 0 for r in results)
            failed = any(isinstance(r, BaseException) for r in results)
            if failed or not busy:
                # A failure (Redis or a shard down) waits a second before the next try
                # rather than re-reading the same batch ten times a second.
                pause = max(interval, FAILURE_PAUSE) if failed else interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=pause)


async def _enter(conn: asyncpg.Connection, tenant_id: UUID) -> bool:
    """Enter the tenant like a writer; False when a move has fenced it (its target
    relays after the switch) or it has left the shard."""
    try:
        await conn.execute("SELECT meridian_relay_enter($1)", tenant_id)
    except asyncpg.PostgresError as exc:
        if exc.sqlstate in MOVED_OR_FENCED:
            return False
        raise
    return True
