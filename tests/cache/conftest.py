"""Cache tests run against a standalone Redis and a real 3-master Redis Cluster."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from cache.breaker import CircuitBreaker
from cache.core import AnyRedis, TwoLevelCache
from cache.metrics import CacheMetrics
from tests.fixtures.redis_servers import RedisClusterServers

STANDALONE_URL = "redis://127.0.0.1:6379/0"


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
        return lambda: Redis.from_url(STANDALONE_URL)
    cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
    host, port = cluster.startup_nodes[0]
    return lambda: RedisCluster(host=host, port=port)


CacheFactory = Callable[..., TwoLevelCache]


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
        kw.setdefault("op_timeout", 1.0)
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
