"""A busy Redis (operations time out now and then) must not open the cache's breaker;
a Redis that refuses or drops connections must. Outcomes are fed to the cache's one
path to Redis (``_l2``) as the client raises them, on a clock the test moves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cache.core import AnyRedis, TwoLevelCache
from cache.metrics import CacheMetrics
from primitives.breaker import CircuitBreaker
from tests.primitives.conftest import Clock


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_url)
    yield redis
    await redis.aclose()


def make(client: Redis, clock: Clock) -> TwoLevelCache:
    # The breaker as meridian.runtime builds it (cache_timeout_window 1 s).
    return TwoLevelCache(
        client,
        namespace="busy",
        metrics=CacheMetrics(CollectorRegistry()),
        breaker=CircuitBreaker(failure_threshold=3, cooldown=2, clock=clock, timeout_window=1.0),
    )


def raising(exc: BaseException) -> Callable[[AnyRedis], Awaitable[None]]:
    async def op(_: AnyRedis) -> None:
        raise exc

    return op


async def answer(r: AnyRedis) -> object:
    return await r.ping()


async def test_timeouts_under_load_keep_the_breaker_closed(client: Redis) -> None:
    clock = Clock()
    cache = make(client, clock)
    for _ in range(20):  # a slow spell: most calls time out, some are answered
        for exc in (TimeoutError(), RedisTimeoutError("Timeout reading from socket")):
            assert await cache._l2(raising(exc), "get") == (False, None)
        clock.now += 0.3
        assert (await cache._l2(answer, "get"))[0]
    assert not cache.breaker.is_open


async def test_connection_failures_open_the_breaker(client: Redis) -> None:
    clock = Clock()
    cache = make(client, clock)
    for _ in range(3):
        await cache._l2(raising(RedisConnectionError("Connection refused")), "get")
    assert cache.breaker.is_open
    # Skipped while open: nothing waits on Redis.
    assert await cache._l2(answer, "get") == (False, None)


async def test_a_hung_redis_opens_it_after_the_window(client: Redis) -> None:
    clock = Clock()
    cache = make(client, clock)
    for _ in range(8):
        await cache._l2(raising(TimeoutError()), "get")
        clock.now += 0.2
    assert cache.breaker.is_open
