"""The two-level cache: L1 in process memory in front of L2 in Redis (or Redis Cluster).

Keys are ``<ns>:{t:<tenant>}:<kind>:<generation>:<id>``: the tenant is the Redis Cluster
hash tag (one tenant's keys share a slot) and the generation of the (tenant, kind) is
part of every key. A write bumps the generation after its commit and publishes it, so
every instance stops using the old keys at once; a loader that raced with the write
stored its result under the old generation, where nobody looks any more.

Misses are single-flight per key, hot keys are recomputed early (XFetch), "not found"
is cached briefly, and Redis sits behind a circuit breaker with a short per-operation
timeout: when it is slow or down the cache serves from L1 and the loader, never fails.
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
    negative_ttl: float = 5.0  # how long "not found" is remembered
    use_l2: bool = True  # False: process memory only (e.g. decrypted or per-process data)
    beta: float = 1.0  # XFetch eagerness; 0 disables early recomputation


@dataclass(slots=True)
class _Entry:
    value: Any  # decoded value, or None for a cached "not found"
    delta: float
    expiry: float  # wall-clock seconds


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
        generation_ttl: float = 5.0,
        op_timeout: float = 0.05,
        breaker: CircuitBreaker | None = None,
        metrics: CacheMetrics | None = None,
    ) -> None:
        self._redis = redis
        self._ns = namespace
        self._channel = f"{namespace}:invalidations"
        self._l1: LocalCache[_Entry] = LocalCache(l1_max_entries)
        # Generations known from Redis (refreshed every generation_ttl seconds, updated
        # by invalidation messages) and local ones bumped by this instance's own writes.
        self._gens: LocalCache[int] = LocalCache(max(1_000, l1_max_entries // 5))
        self._local_gens: dict[tuple[str, str], int] = {}
        self._gen_ttl = generation_ttl
        self._timeout = op_timeout
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
        self, op: Callable[[AnyRedis], Awaitable[T]], reason: str
    ) -> tuple[bool, T | None]:
        """Run one Redis operation: (True, result), or (False, None) when Redis is
        unavailable or skipped by the breaker."""
        if self._redis is None:
            return False, None
        if not self.breaker.allow():
            self.metrics.l2_errors.labels("breaker_open").inc()
            return False, None
        try:
            # asyncio.timeout rather than wait_for: no extra task per call on the hot
            # path, and no cancellation lost when the call completes as it is cancelled.
            async with asyncio.timeout(self._timeout):
                result = await op(self._redis)
        except (RedisError, OSError, TimeoutError) as exc:
            self.breaker.failure()
            self.metrics.l2_errors.labels(reason).inc()
            log.debug("L2 %s failed: %r", reason, exc)
            return False, None
        self.breaker.success()
        return True, result

    def _on_redis_back(self) -> None:
        # Invalidations may have been missed while Redis was away.
        self._l1.clear()
        self._gens.clear()

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
        ok, raw = await self._l2(lambda r: r.get(self.generation_key(tenant, kind)), "gen_get")
        value = int(raw) if ok and raw is not None else (0 if ok else UNKNOWN)
        if ok:
            self._gens.set((tenant, kind), value, self._gen_ttl)
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
        ok, new = await self._l2(lambda r: r.incr(self.generation_key(tenant, kind)), "gen_incr")
        if not ok or new is None:
            self._gens.delete(pair)
            return
        self._gens.set(pair, int(new), self._gen_ttl)
        message = orjson.dumps(
            {"t": tenant, "k": kind, "g": int(new), "ts": time.time(), "src": self._instance}
        )
        await self._l2(lambda r: r.publish(self._channel, message), "publish")

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
        entry = self._l1.get(l1_key)
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
        if use_l2:
            _, raw = await self._l2(lambda r: r.get(key), "get")
            if isinstance(raw, bytes):
                try:
                    env = Envelope.unpack(raw)
                    value = codec.decode(env.payload) if env.payload is not None else None
                except (ValueError, TypeError, orjson.JSONDecodeError):
                    env = None  # a corrupt entry is a miss, never an error
                if env is not None:
                    entry = _Entry(value, env.delta, env.expiry)
                    if not _xfetch_due(entry, policy.beta, time.time()):
                        self.metrics.count("l2", label, "hit")
                        self._l1.set(
                            l1_key, entry, min(_jitter(policy.l1_ttl), env.expiry - time.time())
                        )
                        return value
            self.metrics.count("l2", label, "miss")
        started = time.perf_counter()
        loaded = await loader()
        delta = time.perf_counter() - started
        self.metrics.load_seconds.labels(label).observe(delta)
        ttl = policy.ttl if loaded is not None else policy.negative_ttl
        entry = _Entry(loaded, delta, time.time() + ttl)
        self._l1.set(l1_key, entry, min(_jitter(policy.l1_ttl), ttl))
        if use_l2:
            payload = codec.encode(loaded) if loaded is not None else None
            packed = Envelope(payload, delta, entry.expiry).pack()
            await self._l2(lambda r: r.set(key, packed, px=int(ttl * 1000)), "set")
        return loaded

    def drop_local(self) -> None:
        self._l1.clear()
        self._gens.clear()

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
        known = self._gens.get(pair)
        if known is None or gen > known:
            self._gens.set(pair, gen, self._gen_ttl)
        if msg.get("src") != self._instance and isinstance(msg.get("ts"), float | int):
            self.metrics.invalidation_lag_seconds.observe(max(0.0, time.time() - msg["ts"]))
