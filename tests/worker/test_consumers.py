"""Consumer groups on the real stream: batches, and a poisonous event in one."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from meridian.events import bus
from meridian.worker.consumers import Consumer, GroupReader
from tests.fixtures.waiting import eventually

POISON = 3


def events_of(count: int) -> list[dict[str, Any]]:
    return [
        {"id": str(uuid.uuid4()), "seq": i, "type": "account.created", "data": {}}
        for i in range(1, count + 1)
    ]


async def from_now_on(redis: bus.AnyRedis, group: str) -> None:
    """The group, reading from the stream's end: what earlier tests published is not
    this test's (the reader's own creation from the start then finds it exists)."""
    await redis.xgroup_create(bus.STREAM, group, id="$", mkstream=True)


async def test_a_read_is_handled_as_one_batch_and_acknowledged(redis_url: str) -> None:
    redis = bus.connect(redis_url)
    tenant, group = uuid.uuid4(), f"batch-{uuid.uuid4().hex}"
    batches: list[list[int]] = []

    async def handle(tenant_id: uuid.UUID, event: dict[str, Any]) -> None:
        raise AssertionError("a batch of several is not handled event by event")

    async def handle_batch(items: list[tuple[uuid.UUID, dict[str, Any]]]) -> None:
        batches.append([e["seq"] for t, e in items if t == tenant])

    try:
        await from_now_on(redis, group)
        await bus.publish(redis, tenant, events_of(5), maxlen=100_000)
        reader = GroupReader(redis, Consumer(group, handle, handle_batch), "c1", block_ms=50)
        stop = asyncio.Event()
        task = asyncio.create_task(reader.run(stop))
        await eventually(lambda: any(batches), what="the batch handled")
        stop.set()
        await asyncio.wait_for(task, timeout=5)
        assert [b for b in batches if b] == [[1, 2, 3, 4, 5]]
        pending: Any = await redis.xpending(bus.STREAM, group)
        assert pending["pending"] == 0
    finally:
        await redis.xgroup_destroy(bus.STREAM, group)
        await redis.aclose()


async def test_a_failing_batch_is_handled_one_by_one_and_only_the_poison_waits(
    redis_url: str,
) -> None:
    redis = bus.connect(redis_url)
    tenant, group = uuid.uuid4(), f"poison-{uuid.uuid4().hex}"
    handled: list[int] = []

    async def handle(tenant_id: uuid.UUID, event: dict[str, Any]) -> None:
        if tenant_id != tenant:
            return
        if event["seq"] == POISON:
            raise RuntimeError("poison")
        handled.append(event["seq"])

    async def handle_batch(items: list[tuple[uuid.UUID, dict[str, Any]]]) -> None:
        if any(t == tenant and e["seq"] == POISON for t, e in items):
            raise RuntimeError("poison in the batch")
        raise AssertionError("the batch holds the poison")

    try:
        await from_now_on(redis, group)
        await bus.publish(redis, tenant, events_of(5), maxlen=100_000)
        reader = GroupReader(redis, Consumer(group, handle, handle_batch), "c1", block_ms=50)
        stop = asyncio.Event()
        task = asyncio.create_task(reader.run(stop))
        await eventually(lambda: len(handled) == 4, what="the others handled")
        stop.set()
        await asyncio.wait_for(task, timeout=5)
        assert handled == [1, 2, 4, 5]
        # The poison alone is left pending, for XAUTOCLAIM and then set aside.
        left: Any = await redis.xpending_range(bus.STREAM, group, min="-", max="+", count=10)
        assert len(left) == 1
        entry_id = left[0]["message_id"]
        entries: Any = await redis.xrange(bus.STREAM, entry_id, entry_id)
        owner, event = bus.decode(entries[0][1])
        assert (owner, event["seq"]) == (tenant, POISON)
    finally:
        await redis.xgroup_destroy(bus.STREAM, group)
        await redis.aclose()
