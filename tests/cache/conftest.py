"""Cache tests run against a standalone Redis and a real 3-master Redis Cluster."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from cache.core import AnyRedis, TwoLevelCache
from cache.metrics import CacheMetrics
from primitives.breaker import CircuitBreaker
from tests.fixtures.redis_servers import RedisClusterServers


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(Path(tmp_path_factory.mktemp("redis-cluster")))
    servers.start(masters=3)
    yield servers
    servers.stop()


@pytest.fixture(params=["standalone", "cluster"])
def redis_factory(
    request: pytest.FixtureRequest,
) -> Callable[[], AnyRedis]:
    """Makes new clients (one per simulated API instance) on the chosen deployment."""
    if request.param == "standalone":
        url: str = request.getfixturevalue("redis_url")  # this worker's own database
        return lambda: Redis.from_url(url)
    cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
    host, port = cluster.startup_nodes[0]
    return lambda: RedisCluster(host=host, port=port)


CacheFactory = Callable[..., TwoLevelCache]


def _l2_errors(cache: TwoLevelCache) -> dict[str, float]:
    return {
        sample.labels["reason"]: sample.value
        for metric in cache.metrics.l2_errors.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


def l2_attempts(cache: TwoLevelCache) -> float:
    """Redis operations that were tried and failed (a closed breaker let them through)."""
    return sum(n for reason, n in _l2_errors(cache).items() if reason != "breaker_open")


def l2_skipped(cache: TwoLevelCache) -> float:
    """Redis operations the open breaker skipped: they never waited for Redis."""
    return _l2_errors(cache).get("breaker_open", 0.0)


@pytest.fixture
async def make_cache(
    redis_factory: Callable[[], AnyRedis],
) -> AsyncIterator[CacheFactory]:
    """Cache instances sharing one namespace (like API instances sharing one Redis)."""
    namespace = f"t{uuid.uuid4().hex[:8]}"
    made: list[tuple[TwoLevelCache, AnyRedis]] = []

    def factory(**kw: object) -> TwoLevelCache:
        client = redis_factory()
        # Generous per-operation timeout: a loaded CI box must not turn hits into misses.
        kw.setdefault("op_timeout", 10.0)
        cache = TwoLevelCache(
            client,
            namespace=namespace,
            metrics=CacheMetrics(CollectorRegistry()),
            breaker=CircuitBreaker(failure_threshold=2, cooldown=0.3),
            **kw,  # type: ignore[arg-type]
        )
        made.append((cache, client))
        return cache

    yield factory
    for cache, client in made:
        await cache.close()
        await client.aclose()
