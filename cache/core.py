"""The two-level cache: L1 in process memory in front of L2 in Redis (or Redis Cluster).

Keys are ``<ns>:{t:<tenant>}:<kind>:<generation>:<id>``: the tenant is the Redis Cluster
hash tag (one tenant's keys share a slot) and the generation of the (tenant, kind) is
part of every key. A write bumps the generation after its commit and publishes it, so
every instance stops using the old keys at once; a loader that raced with the write
stored its result under the old generation, where nobody looks any more.

Misses are single-flight per key, hot keys are recomputed early (XFetch), "not found"
is cached briefly, and Redis sits behind a circuit breaker with a short per-operation
timeout: when it is slow or down the cache serves from L1 and the loader, never fails.

While the invalidation feed is live (the subscription is confirmed), generations and
the L1 entries of policies with a ``hold`` are kept until invalidated (at most ``hold``
/ ``generation_hold``, and never past their L2 expiry); when the feed is lost they fall
back at once to the short ``l1_ttl`` / ``generation_ttl`` bounds, and L1 is flushed
when it is back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cache.codec import Codec, Envelope
from cache.metrics import CacheMetrics
from primitives.breaker import CircuitBreaker
from primitives.localcache import LocalCache
from primitives.pubsub import PubSubListener, RedisClient
from primitives.singleflight import SingleFlight

T = TypeVar("T")
log = logging.getLogger("meridian.cache")

AnyRedis = RedisClient


def _jitter(ttl: float) -> float:
    """80-100 % of ``ttl``: values loaded together (a warm-up, a restart) must not all
    expire in the same instant and come back as a burst of misses."""
    return ttl * (0.8 + 0.2 * random.random())  # noqa: S311 - spreading, not secrecy


def _scoped(kind: str, scope: str) -> str:
    return f"{kind}/{scope}" if scope else kind


UNKNOWN = -1  # generation when Redis cannot be asked


@dataclass(frozen=True, slots=True)
class Policy:
    """How one kind of value is cached."""

    ttl: float  # L2 lifetime (and the XFetch expiry)
    l1_ttl: float = 10.0  # the staleness bound when invalidations cannot arrive
    # While invalidations arrive, L1 keeps an entry this long (0: l1_ttl regardless).
    # For per-tenant state read on every request (directory, not-before, actor): such
    # an entry changes only with an invalidation, so it need not be reloaded every few
    # seconds. It is kept in its own LRU, out of reach of the records' churn.
    hold: float = 0.0
    negative_ttl: float = 5.0  # how long "not found" is remembered
    use_l2: bool = True  # False: process memory only (e.g. decrypted or per-process data)
    beta: float = 1.0  # XFetch eagerness; 0 disables early recomputation


@dataclass(slots=True)
class _Entry:
    value: Any  # decoded value, or None for a cached "not found"
    delta: float
    expiry: float  # wall-clock seconds
    fallback: float = 0.0  # seconds it may still live once invalidations stop arriving


# The largest -log(draw) can be (draws are floored at 1e-12, log(0) being undefined).
_XFETCH_REACH = -math.log(1e-12)


def _xfetch_due(entry: _Entry, beta: float, now: float) -> bool:
    """Vattani et al.: recompute early with a probability that grows near expiry."""
    if beta <= 0 or entry.delta <= 0:
        return False
    scale = entry.delta * beta
    if entry.expiry - now > scale * _XFETCH_REACH:
        return False  # no draw could make it due: skip the draw (every L1 hit asks)
    return now - scale * math.log(random.random() or 1e-12) >= entry.expiry  # noqa: S311


class TwoLevelCache:
    def __init__(
        self,
        redis: AnyRedis | None,
        *,
        namespace: str = "m",
        l1_max_entries: int = 50_000,
        held_max_entries: int = 50_000,
        generation_ttl: float = 5.0,
        generation_hold: float = 300.0,
        op_timeout: float = 0.05,
        invalidation_timeout: float = 0.5,
        breaker: CircuitBreaker | None = None,
        metrics: CacheMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,  # L1 lifetimes (tests move it)
    ) -> None:
        self._redis = redis
        self._ns = namespace
        self._channel = f"{namespace}:invalidations"
        self._l1: LocalCache[_Entry] = LocalCache(l1_max_entries, clock=clock)
        # Entries of policies with a hold: per-tenant state, sized for the tenants a
        # process serves (a few entries per tenant), so records cannot push it out.
        self._held: LocalCache[_Entry] = LocalCache(held_max_entries, clock=clock)
        # Generations known from Redis (kept generation_hold seconds while the feed is
        # live, generation_ttl otherwise; updated by invalidation messages) and local
        # ones bumped by this instance's own writes. A generation is ~200 bytes.
        self._gens: LocalCache[int] = LocalCache(
            max(1_000, l1_max_entries // 5) + held_max_entries, clock=clock
        )
        self._local_gens: dict[tuple[str, str], int] = {}
        self._gen_ttl = generation_ttl
        self._gen_hold = max(generation_hold, generation_ttl)
        # Bumped when local state is dropped: a generation read that was in flight then
        # must not be remembered (it may predate messages the new subscription missed).
        self._era = 0
        self._timeout = op_timeout
        # Invalidations run after a commit, on the write path: they may wait longer than
        # a read, and must, since a lost one leaves other instances' entries stale.
        self._invalidation_timeout = max(invalidation_timeout, op_timeout)
        self.breaker = breaker or CircuitBreaker()
        self.breaker.on_close = self._on_redis_back
        self.metrics = metrics or CacheMetrics()
        # One load per key in this process, and one generation read per (tenant, kind).
        self._loads: SingleFlight[Hashable, Any] = SingleFlight()
        self._gen_loads: SingleFlight[tuple[str, str], int] = SingleFlight()
        self._instance = uuid.uuid4().hex
        # Invalidations from other instances. Messages missed while disconnected are
        # lost, so L1 is cleared after every (re)subscription.
        self._listener = (
            PubSubListener(
                redis,
                self._channel,
                self._apply,
                on_subscribed=self.drop_local,
                on_unsubscribed=self._feed_lost,
                name="invalidation subscriber",
                logger=log,
            )
            if redis is not None
            else None
        )
        self.subscribed = self._listener.subscribed if self._listener else asyncio.Event()

    # -- keys -----------------------------------------------------------------------
    def key(self, tenant: str, kind: str, generation: int, item: str) -> str:
        return f"{self._ns}:{{t:{tenant}}}:{kind}:{generation}:{item}"

    def generation_key(self, tenant: str, kind: str) -> str:
        return f"{self._ns}:{{t:{tenant}}}:gen:{kind}"

    # -- L2 access through the breaker ------------------------------------------------
    async def _l2(
        self,
        op: Callable[[AnyRedis], Awaitable[T]],
        reason: str,
        limit: float | None = None,
    ) -> tuple[bool, T | None]:
        """Run one Redis operation: (True, result), or (False, None) when Redis is
        unavailable or skipped by the breaker.

        A timeout is reported to the breaker as a timeout, an error as a failure: a
        busy Redis (answers late, now and then) must not open it, a refused or broken
        connection must (see ``primitives.breaker``)."""
        if self._redis is None:
            return False, None
        if not self.breaker.allow():
            self.metrics.l2_errors.labels("breaker_open").inc()
            return False, None
        try:
            # asyncio.timeout rather than wait_for: no extra task per call on the hot
            # path, and no cancellation lost when the call completes as it is cancelled.
            async with asyncio.timeout(self._timeout if limit is None else limit):
                result = await op(self._redis)
        except (TimeoutError, RedisTimeoutError) as exc:
            self.breaker.timed_out()
            self.metrics.l2_errors.labels(reason).inc()
            log.debug("L2 %s timed out: %r", reason, exc)
            return False, None
        except (RedisError, OSError) as exc:
            self.breaker.failure()
            self.metrics.l2_errors.labels(reason).inc()
            log.debug("L2 %s failed: %r", reason, exc)
            return False, None
        self.breaker.success()
        return True, result

    @property
    def live(self) -> bool:
        """Whether invalidations from other instances arrive (the subscription is
        confirmed): only then are entries kept beyond the short fallback bounds."""
        return self._listener is not None and self.subscribed.is_set()

    def _remember_gen(self, pair: tuple[str, str], value: int) -> None:
        # Generations only grow while a subscription lasts (Redis restarting from empty
        # drops the subscription, and every instance its generations): a late answer
        # must not move one back past a newer one heard from the feed.
        known = self._gens.get(pair)
        if known is not None and known > value:
            value = known
        self._gens.set(pair, value, self._gen_hold if self.live else self._gen_ttl)

    def _on_redis_back(self) -> None:
        # Invalidations may have been missed while Redis was away.
        self.drop_local()

    # -- generations --------------------------------------------------------------------
    async def generation(self, tenant: str, kind: str) -> int:
        """The (tenant, kind) generation, or UNKNOWN when Redis cannot tell: then L2 is
        skipped, since its entries could belong to a generation long gone."""
        pair = (tenant, kind)
        known = self._gens.get(pair)
        if known is not None:
            return known
        # Single-flight: a burst of cold reads asks Redis once, not once per request.
        return await self._gen_loads.run(pair, self._read_generation, tenant, kind)

    async def _read_generation(self, tenant: str, kind: str) -> int:
        era = self._era
        ok, raw = await self._l2(lambda r: r.get(self.generation_key(tenant, kind)), "gen_get")
        value = int(raw) if ok and raw is not None else (0 if ok else UNKNOWN)
        if ok and era == self._era:
            self._remember_gen((tenant, kind), value)
        return value

    async def invalidate(self, tenant: str, kind: str, scope: str = "") -> None:
        """Call after a commit that changed values of ``kind`` for ``tenant``.

        ``scope`` narrows the generation to a slice of the kind (e.g. a bucket of record
        ids), so one write does not invalidate every cached value of the tenant's kind.
        """
        kind = _scoped(kind, scope)
        pair = (tenant, kind)
        # Local first: this instance reads its own writes even if Redis is down.
        self._local_gens[pair] = self._local_gens.get(pair, 0) + 1
        ok, new = await self._l2(
            lambda r: r.incr(self.generation_key(tenant, kind)),
            "gen_incr",
            self._invalidation_timeout,
        )
        if not ok or new is None:
            self._gens.delete(pair)
            log.warning("invalidation of %s/%s not shared: Redis unavailable", tenant, kind)
            return
        self._remember_gen(pair, int(new))
        message = orjson.dumps(
            {"t": tenant, "k": kind, "g": int(new), "ts": time.time(), "src": self._instance}
        )
        sent, _ = await self._l2(
            lambda r: r.publish(self._channel, message), "publish", self._invalidation_timeout
        )
        if not sent:
            log.warning("invalidation of %s/%s not published", tenant, kind)

    # -- the read path --------------------------------------------------------------------
    async def get_or_load(
        self,
        tenant: str,
        kind: str,
        item: str,
        loader: Callable[[], Awaitable[T | None]],
        codec: Codec[T],
        policy: Policy,
        scope: str = "",
    ) -> T | None:
        label = kind  # metrics stay per kind, whatever the scope
        if scope:
            kind = f"{kind}/{scope}"
        pair = (tenant, kind)
        # The known generation inline: this is every request's path, and awaiting
        # generation() would cost a coroutine even when it answers from memory.
        gen = self._gens.get(pair)
        if gen is None:
            gen = await self.generation(tenant, kind)
        l1_key = (tenant, kind, gen, self._local_gens.get(pair, 0), item)
        entry = (self._held if policy.hold else self._l1).get(l1_key)
        if entry is not None:
            # Due for early recomputation, but another request is at it: serve this one.
            if not _xfetch_due(entry, policy.beta, time.time()) or l1_key in self._loads:
                self.metrics.count("l1", label, "hit")
                value: T | None = entry.value
                return value
        else:
            self.metrics.count("l1", label, "miss")
        loaded: T | None = await self._loads.run(
            l1_key, self._fill, tenant, kind, label, gen, item, l1_key, loader, codec, policy
        )
        return loaded

    async def _fill(
        self,
        tenant: str,
        kind: str,
        label: str,
        gen: int,
        item: str,
        l1_key: Hashable,
        loader: Callable[[], Awaitable[T | None]],
        codec: Codec[T],
        policy: Policy,
    ) -> T | None:
        key = self.key(tenant, kind, gen, item)
        use_l2 = policy.use_l2 and gen != UNKNOWN
        l1 = self._held if policy.hold else self._l1
        fallback = _jitter(policy.l1_ttl)
        # Kept until invalidated only while invalidations can arrive, and only under a
        # generation Redis confirmed.
        keep = _jitter(policy.hold) if policy.hold and gen != UNKNOWN and self.live else fallback
        if use_l2:
            _, raw = await self._l2(lambda r: r.get(key), "get")
            if isinstance(raw, bytes):
                try:
                    env = Envelope.unpack(raw)
                    value = codec.decode(env.payload) if env.payload is not None else None
                except (ValueError, TypeError, orjson.JSONDecodeError):
                    env = None  # a corrupt entry is a miss, never an error
                if env is not None:
                    entry = _Entry(value, env.delta, env.expiry, fallback)
                    if not _xfetch_due(entry, policy.beta, time.time()):
                        self.metrics.count("l2", label, "hit")
                        l1.set(l1_key, entry, min(keep, env.expiry - time.time()))
                        return value
            self.metrics.count("l2", label, "miss")
        started = time.perf_counter()
        loaded = await loader()
        delta = time.perf_counter() - started
        self.metrics.load_seconds.labels(label).observe(delta)
        ttl = policy.ttl if loaded is not None else policy.negative_ttl
        entry = _Entry(loaded, delta, time.time() + ttl, fallback)
        l1.set(l1_key, entry, min(keep, ttl))
        if use_l2:
            payload = codec.encode(loaded) if loaded is not None else None
            packed = Envelope(payload, delta, entry.expiry).pack()
            await self._l2(lambda r: r.set(key, packed, px=int(ttl * 1000)), "set")
        return loaded

    def drop_local(self) -> None:
        self._era += 1
        self._l1.clear()
        self._held.clear()
        self._gens.clear()

    def _feed_lost(self) -> None:
        """The subscription is gone: invalidations may be missed from now on, so what
        was kept until invalidated falls back to the short bounds (no flush: with Redis
        away, L1 is what keeps load off the databases)."""
        self._held.shorten(lambda entry: entry.fallback)
        self._gens.shorten(lambda _: self._gen_ttl)

    # -- invalidation subscriber -------------------------------------------------------------
    async def start(self) -> None:
        if self._listener is not None:
            self._listener.start()

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()

    def _apply(self, data: Any) -> None:
        try:
            msg = orjson.loads(data)
            pair = (str(msg["t"]), str(msg["k"]))
            gen = int(msg["g"])
        except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
            log.warning("ignoring malformed invalidation message")
            return
        self._remember_gen(pair, gen)
        if msg.get("src") != self._instance and isinstance(msg.get("ts"), float | int):
            self.metrics.invalidation_lag_seconds.observe(max(0.0, time.time() - msg["ts"]))
