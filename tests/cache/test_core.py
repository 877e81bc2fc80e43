"""The two-level cache against real Redis (standalone and a 3-master cluster)."""

from __future__ import annotations

import asyncio

from cache.codec import JSON
from cache.core import Policy, TwoLevelCache
from tests.cache.conftest import CacheFactory
from tests.fixtures.waiting import eventually

POLICY = Policy(ttl=60, l1_ttl=30, negative_ttl=5)


def counter(value: object, delay: float = 0.0):  # type: ignore[no-untyped-def]
    calls = {"n": 0}

    async def load() -> object:
        calls["n"] += 1
        if delay:
            await asyncio.sleep(delay)
        return value

    return load, calls


def hits(cache: TwoLevelCache, level: str, kind: str, result: str) -> float:
    return cache.metrics.requests.labels(level, kind, result)._value.get()


async def test_miss_then_l1_hit_then_l2_hit_on_another_instance(make_cache: CacheFactory) -> None:
    a, b = make_cache(), make_cache()
    load, calls = counter({"name": "Acme"})
    assert await a.get_or_load("t1", "contact", "c1", load, JSON, POLICY) == {"name": "Acme"}
    assert await a.get_or_load("t1", "contact", "c1", load, JSON, POLICY) == {"name": "Acme"}
    assert calls["n"] == 1
    assert hits(a, "l1", "contact", "hit") == 1
    # Instance B has its own empty L1 but finds the value in Redis.
    assert await b.get_or_load("t1", "contact", "c1", load, JSON, POLICY) == {"name": "Acme"}
    assert calls["n"] == 1
    assert hits(b, "l2", "contact", "hit") == 1


async def test_hundred_concurrent_misses_cause_one_load(make_cache: CacheFactory) -> None:
    cache = make_cache()
    load, calls = counter({"v": 1}, delay=0.05)
    results = await asyncio.gather(
        *(cache.get_or_load("t1", "contact", "hot", load, JSON, POLICY) for _ in range(100))
    )
    assert calls["n"] == 1
    assert all(r == {"v": 1} for r in results)


async def test_write_on_one_instance_is_never_served_stale_by_another(
    make_cache: CacheFactory,
) -> None:
    a, b = make_cache(), make_cache()
    await a.start()
    await b.start()
    await eventually(b.subscribed.is_set, what="B's invalidation subscriber")
    source = {"v": 1}

    async def load() -> object:
        return dict(source)

    assert await b.get_or_load("t1", "contact", "c1", load, JSON, POLICY) == {"v": 1}
    source["v"] = 2  # the committed write...
    await a.invalidate("t1", "contact")  # ...then the invalidation, after the commit
    # A reads its own write at once.
    assert await a.get_or_load("t1", "contact", "c1", load, JSON, POLICY) == {"v": 2}

    async def b_has_v2() -> bool:
        value = await b.get_or_load("t1", "contact", "c1", load, JSON, POLICY)
        assert value in ({"v": 1}, {"v": 2}), value
        return value == {"v": 2}

    # The invalidation reaches B over pub/sub, some time later.
    await eventually(b_has_v2, what="B serving the new value")
    # Once B has seen the invalidation it never goes back to the old value.
    for _ in range(20):
        assert await b.get_or_load("t1", "contact", "c1", load, JSON, POLICY) == {"v": 2}


async def test_not_found_is_cached_briefly(make_cache: CacheFactory) -> None:
    cache = make_cache()
    load, calls = counter(None)
    for _ in range(3):
        assert await cache.get_or_load("t1", "contact", "gone", load, JSON, POLICY) is None
    assert calls["n"] == 1
    short = Policy(ttl=60, l1_ttl=30, negative_ttl=0.05)
    assert await cache.get_or_load("t1", "contact", "gone2", load, JSON, short) is None
    # Past the 50 ms "not found" lifetime in Redis (a sleep only ever lasts longer).
    await asyncio.sleep(0.1)
    assert await make_cache().get_or_load("t1", "contact", "gone2", load, JSON, short) is None
    assert calls["n"] == 3


async def test_tenants_with_the_same_record_id_never_share_an_entry(
    make_cache: CacheFactory,
) -> None:
    a, b = make_cache(), make_cache()
    load1, _ = counter({"owner": "tenant-1"})
    load2, _ = counter({"owner": "tenant-2"})
    assert await a.get_or_load("t1", "contact", "same-id", load1, JSON, POLICY) == {
        "owner": "tenant-1"
    }
    assert await a.get_or_load("t2", "contact", "same-id", load2, JSON, POLICY) == {
        "owner": "tenant-2"
    }
    assert await b.get_or_load("t2", "contact", "same-id", load1, JSON, POLICY) == {
        "owner": "tenant-2"
    }
    assert a.key("t1", "contact", 0, "x") != a.key("t2", "contact", 0, "x")
    assert "{t:t1}" in a.key("t1", "contact", 0, "x")  # the Redis Cluster hash tag


async def test_xfetch_recomputes_hot_keys_before_they_expire(make_cache: CacheFactory) -> None:
    cache = make_cache()
    load, calls = counter({"v": 1}, delay=0.02)
    eager = Policy(ttl=0.5, l1_ttl=0.5, beta=50.0)  # loads take 20 ms: due almost at once
    await cache.get_or_load("t1", "report", "r", load, JSON, eager)
    for _ in range(20):
        await cache.get_or_load("t1", "report", "r", load, JSON, eager)
    assert calls["n"] > 1
    lazy = Policy(ttl=60, l1_ttl=60, beta=0.0)
    load2, calls2 = counter({"v": 1}, delay=0.02)
    for _ in range(20):
        await cache.get_or_load("t1", "report", "r2", load2, JSON, lazy)
    assert calls2["n"] == 1
