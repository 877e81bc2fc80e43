"""Redis stopped mid-run: reads keep succeeding from L1 and the loader, fast; when Redis
returns, L2 is used again and L1 is flushed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from cache.breaker import CircuitBreaker
from cache.codec import JSON
from cache.core import Policy, TwoLevelCache
from cache.metrics import CacheMetrics
from tests.fixtures.redis_servers import RedisServer

POLICY = Policy(ttl=60, l1_ttl=30)


async def test_redis_down_then_back(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = Redis.from_url(server.url, socket_timeout=0.2, socket_connect_timeout=0.2)
    cache = TwoLevelCache(
        client,
        namespace="deg",
        op_timeout=0.05,
        metrics=CacheMetrics(CollectorRegistry()),
        breaker=CircuitBreaker(failure_threshold=2, cooldown=0.3),
    )
    loads = {"n": 0}

    async def load() -> object:
        loads["n"] += 1
        return {"n": loads["n"]}

    try:
        await cache.start()
        await asyncio.wait_for(cache.subscribed.wait(), 5)
        assert await cache.get_or_load("t1", "contact", "a", load, JSON, POLICY) == {"n": 1}

        server.stop()
        started = time.monotonic()
        # Cached values keep coming from L1; new keys come from the loader. No errors.
        for i in range(50):
            assert await cache.get_or_load("t1", "contact", "a", load, JSON, POLICY) == {"n": 1}
            value = await cache.get_or_load("t1", "contact", f"new{i}", load, JSON, POLICY)
            assert value is not None
        elapsed = time.monotonic() - started
        # 100 reads with Redis gone: the breaker keeps them from each waiting for a timeout.
        assert elapsed < 2.0, elapsed
        assert cache.breaker.is_open
        # Writes still invalidate locally while Redis is down (read-your-writes).
        await cache.invalidate("t1", "contact")
        fresh = await cache.get_or_load("t1", "contact", "a", load, JSON, POLICY)
        assert fresh != {"n": 1}

        server.start()  # same port
        await asyncio.sleep(0.35)  # past the breaker's cooldown
        before = loads["n"]
        deadline = time.monotonic() + 5
        while cache.breaker.is_open or not cache.subscribed.is_set():
            await cache.get_or_load("t1", "contact", "probe", load, JSON, POLICY)
            assert time.monotonic() < deadline, "cache did not recover"
            await asyncio.sleep(0.05)
        # L1 was flushed on recovery, so this is a miss that goes to Redis and the loader...
        await cache.get_or_load("t1", "contact", "a", load, JSON, POLICY)
        assert loads["n"] > before
        # ...and L2 is used again: another instance finds the value in Redis.
        other_client = Redis.from_url(server.url)
        other = TwoLevelCache(
            other_client, namespace="deg", metrics=CacheMetrics(CollectorRegistry())
        )
        n = loads["n"]
        await other.get_or_load("t1", "contact", "a", load, JSON, POLICY)
        assert loads["n"] == n
        await other_client.aclose()
    finally:
        await cache.close()
        await client.aclose()
        server.stop()
