"""Cache figures: latency of an L1 hit, an L2 hit and a miss (a real PostgreSQL read),
and the hit ratio under a Zipf-skewed read/write workload.

    .venv/bin/python -m loadtests.cache_levels [--redis URL] [--dsn DSN]

Prints a Markdown table; all numbers come from one run on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable

import asyncpg
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from cache.codec import JSON
from cache.core import Policy, TwoLevelCache
from cache.metrics import CacheMetrics

ROW = {
    "id": "01a209b8-3c62-7092-bff8-d310eb081376",
    "name": "Acme",
    "domain": "acme.com",
    "parent_id": None,
    "owner_id": None,
    "created_at": "2026-11-23T18:43:18+00:00",
    "updated_at": "2026-11-23T18:43:18+00:00",
    "version": 1,
}


async def timed(n: int, op: Callable[[], Awaitable[object]]) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await op()
        samples.append((time.perf_counter() - t0) * 1e6)
    return samples


def summary(name: str, samples: list[float]) -> str:
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99) - 1]
    return f"| {name} | {p50:.1f} | {p99:.1f} |"


async def levels(redis_url: str, dsn: str, n: int) -> list[str]:
    redis = Redis.from_url(redis_url)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    ns = f"bench{random.randrange(1 << 30)}"  # noqa: S311 - a name, not a secret
    cache = TwoLevelCache(redis, namespace=ns, metrics=CacheMetrics(CollectorRegistry()))

    async def constant() -> object:
        return ROW

    async def db_read() -> object:
        row = await pool.fetchrow("SELECT 1 AS id, now() AS at")
        return {"id": row["id"], "at": row["at"].isoformat()}

    l1 = Policy(ttl=300, l1_ttl=300)
    l2_only = Policy(ttl=300, l1_ttl=0)  # nothing stays in L1: every read goes to Redis
    miss = Policy(ttl=300, l1_ttl=0, use_l2=False, negative_ttl=0)
    await cache.get_or_load("t", "k", "hot", constant, JSON, l1)
    await cache.get_or_load("t", "k", "warm", constant, JSON, l2_only)
    rows = [
        summary(
            "L1 hit", await timed(n, lambda: cache.get_or_load("t", "k", "hot", constant, JSON, l1))
        ),
        summary(
            "L2 hit (Redis GET + decode)",
            await timed(n, lambda: cache.get_or_load("t", "k", "warm", constant, JSON, l2_only)),
        ),
        summary(
            "miss (PostgreSQL read through asyncpg)",
            await timed(n, lambda: cache.get_or_load("t", "k", "cold", db_read, JSON, miss)),
        ),
    ]
    await pool.close()
    await redis.aclose()
    return rows


def zipf_sampler(n: int, s: float, rng: random.Random) -> Callable[[], int]:
    weights = [1.0 / (i + 1) ** s for i in range(n)]
    total = sum(weights)
    cumulative = []
    acc = 0.0
    for w in weights:
        acc += w / total
        cumulative.append(acc)

    def sample() -> int:
        import bisect

        return min(bisect.bisect_left(cumulative, rng.random()), n - 1)

    return sample


async def zipf(
    redis_url: str, tenants: int, records: int, ops: int, write_share: float, instances: int
) -> str:
    """Reads spread over `instances` caches sharing one Redis (like API replicas)."""
    rng = random.Random(7)  # noqa: S311 - a reproducible workload
    pick_tenant = zipf_sampler(tenants, 1.1, rng)
    pick_record = zipf_sampler(records, 1.1, rng)
    clients = [Redis.from_url(redis_url) for _ in range(instances)]
    ns = f"zipf{random.randrange(1 << 30)}"  # noqa: S311
    caches = [
        TwoLevelCache(
            c, namespace=ns, l1_max_entries=20_000, metrics=CacheMetrics(CollectorRegistry())
        )
        for c in clients
    ]
    for cache in caches:
        await cache.start()
    policy = Policy(ttl=300, l1_ttl=10)
    loads = 0

    async def load() -> object:
        nonlocal loads
        loads += 1
        return ROW

    reads = writes = 0
    for _ in range(ops):
        tenant = f"t{pick_tenant()}"
        record = pick_record()
        cache = caches[rng.randrange(instances)]
        # Generations per bucket of 64 ids, as the API keeps them for records.
        if rng.random() < write_share:
            writes += 1
            await cache.invalidate(tenant, "contact", str(record % 64))
        else:
            reads += 1
            await cache.get_or_load(
                tenant, "contact", str(record), load, JSON, policy, scope=str(record % 64)
            )
    l1 = sum(c.metrics.requests.labels("l1", "contact", "hit")._value.get() for c in caches)
    l2 = sum(c.metrics.requests.labels("l2", "contact", "hit")._value.get() for c in caches)
    for cache in caches:
        await cache.close()
    for c in clients:
        await c.aclose()
    return (
        f"| {tenants} tenants x {records} records, Zipf s=1.1, {instances} instances, "
        f"{write_share:.0%} writes | {reads} | {l1 / reads:.1%} | {l2 / reads:.1%} | "
        f"{(l1 + l2) / reads:.1%} | {loads / reads:.1%} |"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("-n", type=int, default=5000, help="samples per latency row")
    parser.add_argument("--ops", type=int, default=100_000, help="operations per Zipf run")
    args = parser.parse_args()
    print("| operation | p50 µs | p99 µs |\n|---|---|---|")
    for row in await levels(args.redis, args.dsn, args.n):
        print(row)
    print()
    print("| workload | reads | L1 hits | L2 hits | hit ratio | loads |\n|---|---|---|---|---|---|")
    for share in (0.0, 0.01, 0.05):
        print(await zipf(args.redis, 100, 2000, args.ops, share, instances=2))


if __name__ == "__main__":
    asyncio.run(main())
