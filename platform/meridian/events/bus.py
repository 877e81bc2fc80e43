"""The broker: one Redis stream of every tenant's published events.

The relay (``meridian.worker.relay``) appends each event once, in each tenant's order;
consumer groups (``meridian.worker.consumers``: webhooks, projections, sagas) share the
work of reading it, and every API instance reads it too (``meridian.events.hub``) to feed
its live streams. An entry is ``{tenant, seq, event}``, ``event`` the JSON an API caller
sees (``meridian.events.log.public``). The stream is capped (``MERIDIAN_EVENT_STREAM_MAX``):
it is a transport, the shard's outbox is the record (replays read the outbox).

Delivery is at least once: a relay killed between publishing and recording it publishes
again, and a consumer that dies before acknowledging is redelivered. Consumers deduplicate
by the event's id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from meridian.web.responses import dumps

STREAM = "meridian:events"
AnyRedis = Redis | RedisCluster


def connect(url: str, *, cluster: bool = False) -> AnyRedis:
    """A client for blocking stream reads: no socket timeout shorter than a block (the
    cache's client gives up after 1 s, which a BLOCK of 1 s would trip)."""
    if cluster:
        return RedisCluster.from_url(url, socket_timeout=30, socket_connect_timeout=2)
    return Redis.from_url(url, socket_timeout=30, socket_connect_timeout=2)


def entry(tenant_id: UUID, event: Mapping[str, Any]) -> dict[str, bytes | str | int]:
    return {"tenant": str(tenant_id), "seq": int(event["seq"]), "event": dumps(event)}


def decode(fields: Mapping[bytes, bytes]) -> tuple[UUID, dict[str, Any]]:
    """The tenant and the event of a stream entry."""
    tenant = UUID(fields[b"tenant"].decode())
    event: dict[str, Any] = orjson.loads(fields[b"event"])
    return tenant, event


async def publish(
    redis: AnyRedis, tenant_id: UUID, events: Sequence[Mapping[str, Any]], *, maxlen: int
) -> None:
    """Append ``events`` (one tenant's, in order) in one round trip."""
    pipe = redis.pipeline(transaction=False)
    for event in events:
        pipe.xadd(STREAM, entry(tenant_id, event), maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
    await pipe.execute()
