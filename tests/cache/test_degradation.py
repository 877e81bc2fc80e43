"""Redis stopped mid-run: reads keep succeeding from L1 and the loader, and the breaker
keeps them from trying Redis at all; when Redis returns, L2 is used again and L1 is
flushed.

The breaker runs on a clock the test moves, and Redis operations get a timeout no busy
machine reaches: what is asserted is which operations went to Redis (counted), never how
long anything took.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from cache.codec import JSON
from cache.core import Policy, TwoLevelCache
from cache.metrics import CacheMetrics
from primitives.breaker import CircuitBreaker
from tests.cache.conftest import l2_attempts, l2_skipped
from tests.fixtures.redis_servers import RedisServer
from tests.fixtures.waiting import eventually

# L1 entries outlive any run of this test: an entry that is gone was flushed, not expired.
POLICY = Policy(ttl=3600, l1_ttl=3600)
THRESHOLD = 2
COOLDOWN = 5.0  # on the test's clock


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hits(cache: TwoLevelCache, level: str, result: str) -> float:
    return cache.metrics.requests.labels(level, "contact", result)._value.get()


async def test_redis_down_then_back(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = Redis.from_url(server.url, socket_timeout=10, socket_connect_timeout=10)
    clock = Clock()
    cache = TwoLevelCache(
        client,
        namespace="deg",
        op_timeout=10,
        # Generations known before the outage stay known through it (on the wall clock
        # they are re-read every 5 s, which a slow run would turn into misses).
        generation_ttl=3600,
        metrics=CacheMetrics(CollectorRegistry()),
        breaker=CircuitBreaker(failure_threshold=THRESHOLD, cooldown=COOLDOWN, clock=clock),
    )
    other_client = Redis.from_url(server.url, socket_timeout=10, socket_connect_timeout=10)
    other = TwoLevelCache(
        other_client, namespace="deg", op_timeout=10, metrics=CacheMetrics(CollectorRegistry())
    )
    loads = {"n": 0}

    async def load() -> object:
        loads["n"] += 1
        return {"n": loads["n"]}

    try:
        await cache.start()
        await asyncio.wait_for(cache.subscribed.wait(), 30)
        assert await cache.get_or_load("t1", "contact", "a", load, JSON, POLICY) == {"n": 1}
        # In L1 and L2 before the outage; left alone until Redis is back (see below).
        assert await cache.get_or_load("t2", "contact", "b", load, JSON, POLICY) == {"n": 2}
        assert l2_attempts(cache) == l2_skipped(cache) == 0

        server.stop()
        # Cached values keep coming from L1; new keys come from the loader. No errors.
        for i in range(50):
            assert await cache.get_or_load("t1", "contact", "a", load, JSON, POLICY) == {"n": 1}
            value = await cache.get_or_load("t1", "contact", f"new{i}", load, JSON, POLICY)
            assert value is not None
        # The breaker opened after THRESHOLD failed operations; none of the other reads
        # went to Redis (so none could wait for a timeout: the clock has not moved).
        assert cache.breaker.is_open
        assert l2_attempts(cache) == THRESHOLD
        assert l2_skipped(cache) > 50
        assert loads["n"] == 2 + 50
        # Writes still invalidate locally while Redis is down (read-your-writes).
        await cache.invalidate("t1", "contact")
        fresh = await cache.get_or_load("t1", "contact", "a", load, JSON, POLICY)
        assert fresh != {"n": 1}
        assert l2_attempts(cache) == THRESHOLD

        server.start()  # same port, empty (no persistence)

        async def recovered() -> bool:
            # Past the cooldown: the next operation is the breaker's one probe; a probe
            # that meets a connection Redis has not accepted yet reopens it for a while.
            clock.now += COOLDOWN
            await cache.get_or_load("t3", "contact", "probe", load, JSON, POLICY)
            return not cache.breaker.is_open and cache.subscribed.is_set()

        await eventually(recovered, interval=0.05, what="the cache using Redis again")

        # L1 was flushed on recovery: t2's entry, whose key is the same as before the
        # outage (generation 0 then and now), is a miss now, and so is Redis (restarted
        # empty), so the loader runs again.
        before_loads, before_misses = loads["n"], hits(cache, "l1", "miss")
        assert await cache.get_or_load("t2", "contact", "b", load, JSON, POLICY) == {
            "n": before_loads + 1
        }
        assert hits(cache, "l1", "miss") == before_misses + 1
        # ...and L2 is used again: another instance finds the value in Redis.
        n = loads["n"]
        assert await other.get_or_load("t2", "contact", "b", load, JSON, POLICY) == {"n": n}
        assert loads["n"] == n
        assert hits(other, "l2", "hit") == 1
    finally:
        await cache.close()
        await client.aclose()
        await other_client.aclose()
        server.stop()
