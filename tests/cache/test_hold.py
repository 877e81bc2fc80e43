"""Per-tenant state kept until invalidated: while the invalidation feed is live, an
entry of a policy with a ``hold`` outlives its short ``l1_ttl`` (no reload, no Redis
round trip), an invalidation still reaches every instance at once, and losing the feed
brings the short bound back. The L1 clock is the test's: nothing sleeps."""

from __future__ import annotations

import uuid
from typing import Any

from cache.codec import JSON
from cache.core import Policy, TwoLevelCache
from meridian.directory import CachedDirectory
from meridian.oauth.notbefore import NotBeforeStore
from tenancy.context import TenantContext, TenantStatus
from tests.cache.conftest import CacheFactory
from tests.fixtures.waiting import eventually

HELD = Policy(ttl=300, l1_ttl=5, hold=300)
SHORT = Policy(ttl=300, l1_ttl=5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def count(cache: TwoLevelCache, level: str, kind: str, result: str) -> float:
    return cache.metrics.requests.labels(level, kind, result)._value.get()


async def live(cache: TwoLevelCache) -> TwoLevelCache:
    await cache.start()
    await eventually(cache.subscribed.is_set, what="the invalidation subscriber")
    return cache


class Loader:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        return {"n": self.calls}


async def test_held_entry_is_not_reloaded_after_its_short_ttl(make_cache: CacheFactory) -> None:
    clock = Clock()
    cache = await live(make_cache(clock=clock))
    load = Loader()
    assert await cache.get_or_load("t1", "held", "x", load, JSON, HELD) == {"n": 1}
    assert await cache.get_or_load("t1", "short", "x", load, JSON, SHORT) == {"n": 2}
    clock.now += 60  # twelve times l1_ttl, and the generations' 5 s
    assert await cache.get_or_load("t1", "held", "x", load, JSON, HELD) == {"n": 1}
    assert count(cache, "l1", "held", "hit") == 1
    assert count(cache, "l1", "held", "miss") == 1  # the first read only
    # Without a hold the entry expired from L1 (and came back from Redis).
    assert await cache.get_or_load("t1", "short", "x", load, JSON, SHORT) == {"n": 2}
    assert count(cache, "l1", "short", "miss") == 2
    assert load.calls == 2


async def test_held_entry_is_invalidated_on_another_instance_at_once(
    make_cache: CacheFactory,
) -> None:
    clock = Clock()
    a, b = await live(make_cache(clock=clock)), await live(make_cache(clock=clock))
    load = Loader()
    assert await b.get_or_load("t1", "held", "x", load, JSON, HELD) == {"n": 1}
    clock.now += 60
    await a.invalidate("t1", "held")

    async def reloaded() -> bool:
        return await b.get_or_load("t1", "held", "x", load, JSON, HELD) != {"n": 1}

    await eventually(reloaded, what="the invalidation reaching the other instance")


async def test_losing_the_feed_brings_back_the_short_ttl(make_cache: CacheFactory) -> None:
    clock = Clock()
    cache = await live(make_cache(clock=clock))
    load = Loader()
    await cache.get_or_load("t1", "held", "x", load, JSON, HELD)
    await cache.close()  # the subscription ends as it would when Redis goes away
    assert not cache.live
    clock.now += 4  # within l1_ttl: still served from L1
    await cache.get_or_load("t1", "held", "x", load, JSON, HELD)
    assert count(cache, "l1", "held", "hit") == 1
    clock.now += 2  # past l1_ttl since the feed was lost
    await cache.get_or_load("t1", "held", "x", load, JSON, HELD)
    assert count(cache, "l1", "held", "miss") == 2


class CountingDirectory:
    """Stands for tenancy.directory.TenantDirectory: counts loads, changes nothing."""

    def __init__(self, tenant_id: uuid.UUID) -> None:
        self.loads = 0
        self.ctx = TenantContext(tenant_id, "held", "us-1", "us", TenantStatus.ACTIVE, 1)

    async def load(self, tenant_id: uuid.UUID) -> TenantContext | None:
        self.loads += 1
        return self.ctx


class CountingNotBefore(NotBeforeStore):
    loads = 0

    async def _load(self, tenant_id: uuid.UUID, user_id: uuid.UUID | None) -> float:
        self.loads += 1
        return 0.0


async def test_directory_and_not_before_entries_stay_until_invalidated(
    make_cache: CacheFactory,
) -> None:
    clock = Clock()
    cache = await live(make_cache(clock=clock))
    tenant_id = uuid.uuid4()
    loader = CountingDirectory(tenant_id)
    # As the runtime builds them: directory_ttl 5 s, tenant_state_hold 300 s.
    directory = CachedDirectory(loader, cache, l1_ttl=5.0, hold=300.0)  # type: ignore[arg-type]
    revocations = CountingNotBefore(None, cache, hold=300.0)  # type: ignore[arg-type]
    for _ in range(10):  # nearly four minutes, a request every 25 s (l1_ttl is 5 s)
        assert await directory.resolve(tenant_id) == loader.ctx
        assert await revocations.not_before(tenant_id, None) == 0.0
        clock.now += 25
    assert (loader.loads, revocations.loads) == (1, 1)
    # A suspension (or a revocation) invalidates: the next read loads again at once.
    await directory.invalidate(tenant_id)
    await directory.resolve(tenant_id)
    assert loader.loads == 2
