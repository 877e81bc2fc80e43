"""The rate limiter: GCRA quotas decided in process, all or nothing across quotas, what
the headers need, a refused request costing nothing, and the counts shared by
instances through a real Redis (standalone and a 3-master cluster), or not shared while
Redis is unreachable, without an error."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from redis.asyncio import Redis

from cache.core import AnyRedis
from cache.ratelimit import Quota, RateLimiter
from primitives.breaker import CircuitBreaker
from tests.fixtures.redis_servers import free_port

# A loaded test machine must not turn a sync (a new connection, the script's loading, a
# cluster's slot map) into a timeout.
SLOW_OK = 5.0


class Clock:
    """Seconds since the epoch, moved by the test (instances share it)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _quotas(limiter: RateLimiter, tenant: str, caller: str, t: int, c: int) -> list[Quota]:
    return [
        Quota("tenant", limiter.key(tenant, "tenant"), t, 60.0),
        Quota("caller", limiter.key(tenant, caller), c, 60.0),
    ]


def test_gcra_refills_smoothly_and_a_refusal_costs_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(None, clock=clock)
    tenant = uuid.uuid4().hex
    # Six a minute for the caller: the first six pass at once.
    verdicts = [limiter.hit(_quotas(limiter, tenant, "user:1", 100, 6)) for _ in range(6)]
    assert all(v.allowed for v in verdicts)
    assert [v.states[1].remaining for v in verdicts] == [5, 4, 3, 2, 1, 0]
    assert [v.states[0].remaining for v in verdicts] == [99, 98, 97, 96, 95, 94]
    refused = limiter.hit(_quotas(limiter, tenant, "user:1", 100, 6))
    assert not refused.allowed
    assert refused.retry_after == 10.0  # one request every 10 s at six a minute
    assert refused.states[1].reset == 60.0
    # The refused request took nothing from the tenant's quota either.
    other = limiter.hit(_quotas(limiter, tenant, "user:2", 100, 6))
    assert other.allowed
    assert other.states[0].remaining == 93
    # One more after 10 s, not a whole new window.
    clock.now += 10
    assert limiter.hit(_quotas(limiter, tenant, "user:1", 100, 6)).allowed
    assert not limiter.hit(_quotas(limiter, tenant, "user:1", 100, 6)).allowed
    # An idle minute gives the whole quota back.
    clock.now += 60
    back = limiter.hit(_quotas(limiter, tenant, "user:1", 100, 6))
    assert back.allowed
    assert back.states[1].remaining == 5


def test_a_spent_tenant_quota_refuses_every_caller() -> None:
    limiter = RateLimiter(None, clock=Clock())
    tenant = uuid.uuid4().hex
    for n in range(3):
        assert limiter.hit(_quotas(limiter, tenant, f"client:{n}", 3, 50)).allowed
    refused = limiter.hit(_quotas(limiter, tenant, "client:9", 3, 50))
    assert not refused.allowed
    assert refused.retry_after == 20.0
    assert refused.states[1].remaining == 50  # the new caller's own quota is untouched
    # Another tenant is not affected.
    assert limiter.hit(_quotas(limiter, uuid.uuid4().hex, "client:9", 3, 50)).allowed


def test_high_rates_keep_their_precision() -> None:
    """600,000 a minute is one request per 100 µs: one tick, counted exactly."""
    clock = Clock()
    limiter = RateLimiter(None, clock=clock)
    quota = [Quota("tenant", limiter.key(uuid.uuid4().hex, "tenant"), 600_000, 60.0)]
    assert limiter.hit(quota).states[0].remaining == 599_999
    clock.now += 0.0001
    assert limiter.hit(quota).states[0].remaining == 599_999


async def test_instances_share_their_counts_through_redis(
    redis_factory: Callable[[], AnyRedis],
) -> None:
    clock = Clock()
    namespace = f"t{uuid.uuid4().hex[:6]}"
    a = RateLimiter(redis_factory(), namespace=namespace, op_timeout=SLOW_OK, clock=clock)
    b = RateLimiter(redis_factory(), namespace=namespace, op_timeout=SLOW_OK, clock=clock)
    tenants = [uuid.uuid4().hex for _ in range(3)]  # several hash slots on the cluster
    for tenant in tenants:
        for _ in range(4):
            assert a.hit(_quotas(a, tenant, "user:1", 100, 10)).allowed
        for _ in range(3):
            assert b.hit(_quotas(b, tenant, "user:1", 100, 10)).allowed
    assert await a.sync()
    assert await b.sync()
    assert await a.sync() is False  # nothing new to add
    for tenant in tenants:
        # b learned a's four when it added its three; a learns b's at its next sync.
        seen = b.hit(_quotas(b, tenant, "user:1", 100, 10))
        assert seen.states[1].remaining == 2  # 10 - 4 - 3 - this one
    assert await b.sync()
    # a learns the others' requests when it next adds its own: one hit, one sync.
    t0 = tenants[0]
    assert a.hit(_quotas(a, t0, "user:1", 100, 10)).states[1].remaining == 5  # its own view
    assert await a.sync()  # 4 + 3 + 1 + 1 shared: nine
    assert a.hit(_quotas(a, t0, "user:1", 100, 10)).states[1].remaining == 0
    assert not a.hit(_quotas(a, t0, "user:1", 100, 10)).allowed
    assert await a.sync()
    # b, not told yet, lets one more through (the bound: what another instance admits
    # within one sync interval), then knows.
    assert b.hit(_quotas(b, t0, "user:1", 100, 10)).allowed
    assert await b.sync()
    assert not b.hit(_quotas(b, t0, "user:1", 100, 10)).allowed


async def test_standing_tells_the_fleets_count_and_takes_nothing(
    redis_factory: Callable[[], AnyRedis],
) -> None:
    clock = Clock()
    namespace = f"t{uuid.uuid4().hex[:6]}"
    a = RateLimiter(redis_factory(), namespace=namespace, op_timeout=SLOW_OK, clock=clock)
    viewer = RateLimiter(redis_factory(), namespace=namespace, op_timeout=SLOW_OK, clock=clock)
    tenant = uuid.uuid4().hex
    quotas = _quotas(a, tenant, "user:1", 100, 10)
    for _ in range(4):
        assert a.hit(quotas).allowed
    # Not shared yet: an instance that saw none of them knows of none.
    assert [s.remaining for s in await viewer.standing(quotas)] == [100, 10]
    assert await a.sync()
    for _ in range(2):  # asked again: nothing was taken
        assert [s.remaining for s in await viewer.standing(quotas)] == [96, 6]
    states = await a.standing(quotas)
    assert [s.remaining for s in states] == [96, 6]
    assert states[1].reset == 24.0  # four requests at one per 6 s
    assert a.hit(quotas).states[1].remaining == 5
    # A quota nobody used is whole.
    unused = _quotas(a, uuid.uuid4().hex, "user:1", 100, 10)
    assert [s.remaining for s in await viewer.standing(unused)] == [100, 10]


async def test_standing_without_redis_is_this_process_view() -> None:
    clock = Clock()
    down = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    limiter = RateLimiter(
        down, breaker=CircuitBreaker(failure_threshold=1, cooldown=60.0), clock=clock
    )
    quotas = _quotas(limiter, uuid.uuid4().hex, "user:1", 100, 10)
    assert limiter.hit(quotas).allowed
    assert [s.remaining for s in await limiter.standing(quotas)] == [99, 9]
    assert limiter.breaker.is_open


async def test_redis_down_each_process_counts_alone_never_an_error() -> None:
    clock = Clock()
    down = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    breaker = CircuitBreaker(failure_threshold=1, cooldown=60.0)
    limiter = RateLimiter(down, breaker=breaker, clock=clock)
    tenant = uuid.uuid4().hex
    assert limiter.hit(_quotas(limiter, tenant, "user:1", 100, 2)).allowed
    assert await limiter.sync() is False
    assert breaker.is_open  # later syncs do not wait for Redis
    verdicts = [limiter.hit(_quotas(limiter, tenant, "user:1", 100, 2)) for _ in range(2)]
    assert [v.allowed for v in verdicts] == [True, False]
    assert verdicts[1].retry_after == 30.0
    assert await limiter.sync() is False
    # A long outage: quotas whole again are forgotten with their unshared requests, so
    # memory follows the callers of the last period.
    clock.now += 61
    assert limiter.forget_full() == 2
    assert await limiter.sync() is False  # nothing left to share


async def test_full_quotas_are_forgotten() -> None:
    clock = Clock()
    limiter = RateLimiter(None, clock=clock)
    for n in range(100):
        limiter.hit(_quotas(limiter, uuid.uuid4().hex, f"user:{n}", 100, 10))
    clock.now += 5  # the tenants' quotas (one every 0.6 s) are whole again, not the callers'
    assert limiter.forget_full() == 100
    clock.now += 1
    assert limiter.forget_full() == 100
    assert limiter.hit(_quotas(limiter, uuid.uuid4().hex, "user:1", 100, 10)).allowed
