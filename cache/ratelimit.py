"""Rate limits shared by every instance through Redis, decided in process.

The algorithm is GCRA (the generic cell rate algorithm, as redis-cell and Stripe's
limiter use it): a quota of ``limit`` requests per ``period`` seconds is one number per
key, its theoretical arrival time (TAT). A request is allowed when ``TAT - period`` is
not after now, and moves TAT on by ``period / limit``. So a quota refills smoothly (no
burst at a window's edge, as fixed windows allow), an idle caller has its whole quota
at once, and a refused request costs nothing. One call checks several quotas (a
tenant's and its caller's) all or nothing, and says what the IETF ``RateLimit`` headers
need.

Each request is decided here, from this process's copy of the TATs: a Redis round trip
per request cost a cached read 37 % of its throughput (``docs/benchmarks.md``). Every
``sync_interval`` seconds the requests this process let through are added to the shared
TATs in Redis (one Lua script per tenant: GCRA's own update, ``n`` requests at once), and
the shared TATs come back: each process then counts what every other one let through.
So the fleet may let through, beyond a quota, what the other instances admitted within
one interval (100 ms by default); a single instance is exact. The keys of one tenant
share its hash tag, so each script runs on one Redis Cluster node.

``limits`` was weighed: its strategies answer allowed or not per call to the storage,
and the remaining count is another call, so two quotas with headers would take four
round trips per request. With Redis down or slow (a breaker and a timeout, as the
cache's L2), nothing changes on the request path: each process just stops learning the
others' counts until Redis answers again. Never an error.

Time is counted in integer ticks of 100 µs: Lua numbers are doubles, which Redis writes
with 14 significant digits, exact for whole ticks (a quota's rate is at most 10,000
requests a second, its interval at least one tick).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from cache.core import AnyRedis
from primitives.breaker import CircuitBreaker

log = logging.getLogger("meridian.ratelimit")

TICKS = 10_000  # per second
# KEYS: the quotas' keys; ARGV: now, then per key: requests to add, interval, period.
# Adds the requests to each shared TAT as GCRA does (from now if it is in the past) and
# returns the TATs.
_ADD = """
local now = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local n = tonumber(ARGV[3 * i - 1])
  local interval = tonumber(ARGV[3 * i])
  local period = tonumber(ARGV[3 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  tat = tat + n * interval
  if tat > now + period then tat = now + period end
  redis.call('SET', KEYS[i], tat, 'PX', math.ceil((tat - now) / 10))
  out[i] = tat
end
return out
"""


@dataclass(frozen=True, slots=True)
class Quota:
    """``limit`` requests per ``period`` seconds for the key ``key`` (named ``name`` in
    the headers); ``interval`` is the ticks between two requests at the quota's steady
    rate, ``span`` the period in ticks."""

    name: str
    key: str
    limit: int
    period: float
    interval: int = field(init=False)
    span: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "interval", max(1, round(self.period * TICKS / self.limit)))
        object.__setattr__(self, "span", round(self.period * TICKS))


@dataclass(frozen=True, slots=True)
class QuotaState:
    quota: Quota
    remaining: int
    reset: float  # seconds until the whole quota is available again
    wait: float  # seconds until one more request would be allowed


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    states: tuple[QuotaState, ...]

    @property
    def retry_after(self) -> float:
        """Seconds until the request would be allowed (0 when it was)."""
        return 0.0 if self.allowed else max(s.wait for s in self.states)

    @property
    def refused_by(self) -> QuotaState | None:
        """The first quota that had nothing left (None when the request was allowed)."""
        return None if self.allowed else next(s for s in self.states if s.wait > 0)


def _state(q: Quota, tat: int, now: int) -> QuotaState:
    """The quota ``q`` with its TAT at ``tat``, seen at ``now`` (ticks)."""
    wait = max(0, tat + q.interval - q.span - now)
    remaining = max(0, (q.span - (tat - now)) // q.interval)
    return QuotaState(q, remaining, (tat - now) / TICKS, wait / TICKS)


class _Key:
    """This process's view of one quota key: the TAT (the shared one as last synced,
    plus what this process let through since) and the requests not yet added to it."""

    __slots__ = ("interval", "pending", "span", "tag", "tat")

    def __init__(self, tag: str, interval: int, span: int) -> None:
        self.tag, self.interval, self.span = tag, interval, span
        self.tat = 0
        self.pending = 0


class RateLimiter:
    def __init__(
        self,
        redis: AnyRedis | None,
        *,
        namespace: str = "m",
        sync_interval: float = 0.1,
        op_timeout: float = 0.5,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._ns = namespace
        self._interval = sync_interval
        self._timeout = op_timeout
        self.breaker = breaker or CircuitBreaker(failure_threshold=3, cooldown=2.0)
        self._script = redis.register_script(_ADD) if redis is not None else None
        # Standalone Redis takes every key in one script; a cluster one call per tenant.
        self._by_tenant = isinstance(redis, RedisCluster)
        # Only quotas not whole again have state: a key whose TAT has passed is a full
        # quota, which the sync loop forgets (so this holds the callers active within
        # the last period).
        self._keys: dict[str, _Key] = {}
        self._dirty: set[str] = set()
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def key(self, tenant: str, scope: str) -> str:
        # The tenant's hash tag: every key of one tenant is on one Redis Cluster node.
        return f"{self._ns}:{{t:{tenant}}}:rl:{scope}"

    # -- the request path: no I/O -------------------------------------------------------
    def hit(self, quotas: Sequence[Quota]) -> Verdict:
        """Take one request from every quota if each has one left, else from none."""
        now = int(self._clock() * TICKS)
        keys = [self._key(q) for q in quotas]
        tats = [max(k.tat, now) for k in keys]
        allowed = all(tat + q.interval - q.span <= now for q, tat in zip(quotas, tats, strict=True))
        states: list[QuotaState] = []
        for q, k, tat in zip(quotas, keys, tats, strict=True):
            if allowed:
                tat += q.interval
                k.tat = tat
                k.pending += 1
                self._dirty.add(q.key)
            states.append(_state(q, tat, now))
        return Verdict(allowed, tuple(states))

    async def standing(self, quotas: Sequence[Quota]) -> tuple[QuotaState, ...]:
        """Where each quota stands now, nothing taken: the later of this process's TAT
        and the shared one in Redis (every instance's requests up to its last sync).
        Without Redis, this process's view alone."""
        now = int(self._clock() * TICKS)
        shared = await self._shared([q.key for q in quotas])
        states = []
        for q, theirs in zip(quotas, shared, strict=True):
            k = self._keys.get(q.key)
            states.append(_state(q, max(now, theirs, k.tat if k is not None else 0), now))
        return tuple(states)

    async def _shared(self, keys: list[str]) -> list[int]:
        none = [0] * len(keys)
        if self._redis is None or not keys or not self.breaker.allow():
            return none
        try:
            async with asyncio.timeout(self._timeout):
                # One tenant's keys share a hash tag: one node of a Redis Cluster.
                found = await self._redis.mget(keys)
        except TimeoutError:
            self.breaker.timed_out()
            return none
        except (RedisError, OSError):
            self.breaker.failure()
            return none
        self.breaker.success()
        return [int(float(v)) if v is not None else 0 for v in found]

    def _key(self, quota: Quota) -> _Key:
        # A key names its quota's size (the callers put it there), so a key's quota
        # never changes.
        found = self._keys.get(quota.key)
        if found is None:
            tag = quota.key[quota.key.index("{") : quota.key.index("}") + 1]
            found = self._keys[quota.key] = _Key(tag, quota.interval, quota.span)
        return found

    # -- sharing the counts ------------------------------------------------------------
    async def sync(self) -> bool:
        """Add what this process let through to the shared TATs and take theirs back;
        False when Redis could not be asked (nothing else changes then)."""
        if self._script is None:
            # Nobody to share with: what this process let through is in its TATs.
            for name in self._dirty:
                if (k := self._keys.get(name)) is not None:
                    k.pending = 0
            self._dirty = set()
            return False
        if not self._dirty or not self.breaker.allow():
            return False
        batch: dict[str, tuple[_Key, int]] = {}
        for name in self._dirty:
            k = self._keys.get(name)
            if k is not None:
                batch[name] = (k, k.pending)
                k.pending = 0
        self._dirty = set()
        groups: dict[str, list[str]] = {}
        for name, (k, _) in batch.items():
            groups.setdefault(k.tag if self._by_tenant else "", []).append(name)
        now = int(self._clock() * TICKS)
        try:
            async with asyncio.timeout(self._timeout):
                answers = await asyncio.gather(
                    *(self._add(names, batch, now) for names in groups.values())
                )
        except TimeoutError:
            self.breaker.timed_out()
            return False
        except (RedisError, OSError) as exc:
            self.breaker.failure()
            log.warning("rate limits not shared for now", extra={"error": repr(exc)})
            return False
        self.breaker.success()
        for names, tats in zip(groups.values(), answers, strict=True):
            for name, shared in zip(names, tats, strict=True):
                k = batch[name][0]
                # The shared TAT holds every instance's requests up to the sync; this
                # process's own since then come on top.
                k.tat = max(int(shared), now) + k.pending * k.interval
        return True

    async def _add(
        self, names: list[str], batch: dict[str, tuple[_Key, int]], now: int
    ) -> list[int]:
        assert self._script is not None
        args: list[int] = [now]
        for name in names:
            k, n = batch[name]
            args += [n, k.interval, k.span]
        return list(await self._script(keys=names, args=args))

    def forget_full(self) -> int:
        """Drop the keys whose quota is whole again (their TAT has passed), with any
        requests of theirs not yet shared: Redis did not answer for a whole period, and
        adding them now would charge an old period's requests to the current one."""
        now = int(self._clock() * TICKS)
        full = [name for name, k in self._keys.items() if k.tat <= now]
        for name in full:
            del self._keys[name]
            self._dirty.discard(name)
        return len(full)

    async def _sync_loop(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sync()
                rounds += 1
                if rounds % 50 == 0:
                    self.forget_full()
            except Exception:  # never let the loop die; the next round tries again
                log.exception("rate limit sync failed")

    def start(self) -> None:
        """The loop that shares the counts (with Redis) and forgets full quotas."""
        if self._task is None:
            self._task = asyncio.create_task(self._sync_loop(), name="rate limit sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.sync()  # what this process let through still counts for the others
