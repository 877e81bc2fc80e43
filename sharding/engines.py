"""One async engine per shard, created lazily, with a breaker that fails fast.

A shard that is down must fail only its own tenants and fail them quickly: after a
connection failure the shard is marked down for ``cooldown`` seconds, during which
requests for it are refused at once instead of each waiting for a connect timeout.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from primitives.breaker import CircuitBreaker
from sharding.engine import EngineTraits, ShardEngine, asyncpg_dsn, detect_engine, traits
from sharding.errors import ShardUnavailableError, UnknownShardError

log = logging.getLogger("sharding.engines")

# How a server refuses a new connection to a shard database: not accepting connections
# (ALLOW_CONNECTIONS false, or being dropped or renamed: 55000), gone meanwhile (3D000),
# starting up or shutting down (57P03). Only at connect time: from a query, the same
# SQLSTATEs are that query's own errors (55000 is also "currval not yet defined").
REFUSED_AT_CONNECT = frozenset({"55000", "3D000", "57P03"})
# Out of connection slots: busy rather than down, so the breaker stays closed.
BUSY_AT_CONNECT = frozenset({"53300"})


@dataclass(frozen=True, slots=True)
class ShardInfo:
    id: str
    region: str
    dsn: str
    state: str = "active"
    capacity: int = 1000
    # Holds one tenant only: placement by region never picks it.
    dedicated: bool = False
    # What the database runs; what depends on it is sharding.engine.traits.
    engine: ShardEngine = ShardEngine.POSTGRES


@dataclass(frozen=True, slots=True)
class PoolOptions:
    pool_size: int = 10
    max_overflow: int = 10
    # Connections of the raw asyncpg pool that serves hot reads (see ShardRouter.reader).
    read_pool_size: int = 10
    pool_timeout: float = 5.0
    connect_timeout: float = 2.0
    # Per statement; a hung shard must not hold a request (and its pool slot) forever.
    statement_timeout_ms: int = 15_000
    cooldown: float = 2.0


class ShardEngines:
    """The per-shard connection pools of one process."""

    def __init__(self, shards: list[ShardInfo], options: PoolOptions | None = None) -> None:
        self._options = options or PoolOptions()
        self._shards = {s.id: s for s in shards}
        self._engines: dict[str, AsyncEngine] = {}
        self._read_pools: dict[str, asyncpg.Pool] = {}
        self._pool_locks: dict[str, asyncio.Lock] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        # The engine found on each database when its read pool was made: once known,
        # it outranks the recorded one (the database is what the SQL runs on).
        self._detected: dict[str, ShardEngine] = {}

    @property
    def shards(self) -> dict[str, ShardInfo]:
        return dict(self._shards)

    def set_topology(self, shards: list[ShardInfo]) -> None:
        """Adopt a new topology; engines of shards whose DSN changed are rebuilt lazily."""
        new = {s.id: s for s in shards}
        for sid, old in self._shards.items():
            # A new engine too (a shard distributed in place): the read pools carry
            # the engine's settings, and sessions take the database's at connect.
            if sid not in new or new[sid].dsn != old.dsn or new[sid].engine != old.engine:
                engine = self._engines.pop(sid, None)
                if engine is not None:
                    asyncio.get_running_loop().create_task(engine.dispose())
                pool = self._read_pools.pop(sid, None)
                if pool is not None:
                    asyncio.get_running_loop().create_task(pool.close())
                self._detected.pop(sid, None)
        self._shards = new

    def check_breaker(self, shard_id: str) -> None:
        """Raise at once if the shard is known to be down (its breaker is open, or a
        probe after the cooldown is still out). A transaction that gets through after
        the cooldown is the probe: its outcome (``mark_up``/``mark_down``) decides."""
        breaker = self._breakers.get(shard_id)
        if breaker is not None and not breaker.allow():
            raise ShardUnavailableError(shard_id, retry_after=breaker.retry_after)

    def unavailable_for(self, shard_id: str) -> float:
        """Seconds until the shard's breaker lets a call through (0: now); asks
        without becoming the probe, for reports such as readiness."""
        breaker = self._breakers.get(shard_id)
        return 0.0 if breaker is None else breaker.retry_after

    def shard_engine(self, shard_id: str) -> ShardEngine:
        """The shard's database engine: as detected on the database once its read pool
        has been made, else as recorded in the topology (an unknown shard: postgres)."""
        detected = self._detected.get(shard_id)
        if detected is not None:
            return detected
        info = self._shards.get(shard_id)
        return ShardEngine.POSTGRES if info is None else ShardEngine(info.engine)

    def traits(self, shard_id: str) -> EngineTraits:
        """What the shard's engine decides (sharding.engine)."""
        return traits(self.shard_engine(shard_id))

    async def read_pool(self, shard_id: str) -> asyncpg.Pool:
        """The shard's raw asyncpg pool for hot reads, created on first use."""
        self.check_breaker(shard_id)
        pool = self._read_pools.get(shard_id)
        if pool is not None:
            return pool
        info = self._shards.get(shard_id)
        if info is None:
            raise UnknownShardError(shard_id)
        lock = self._pool_locks.setdefault(shard_id, asyncio.Lock())
        async with lock:
            pool = self._read_pools.get(shard_id)
            if pool is None:
                try:
                    pool = await self._open_read_pool(info)
                except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                    raise self.mark_down(shard_id) from exc
                self._read_pools[shard_id] = pool
        return pool

    async def _open_read_pool(self, info: ShardInfo) -> asyncpg.Pool:
        """A read pool set up for the shard's engine, checked against its database once
        (one catalog query); when the database runs another engine than the topology
        says, that is logged and the pool is made again for the engine it runs."""
        engine = self.shard_engine(info.id)
        pool = await self._create_read_pool(info, traits(engine))
        try:
            async with pool.acquire() as conn:
                detected = await detect_engine(conn)
        except BaseException:
            await pool.close()
            raise
        self._detected[info.id] = detected
        if detected is engine:
            return pool
        log.error(
            "shard %s is recorded as engine %s but its database runs %s; using %s "
            "(record it with `meridian shards add %s --engine %s ...`)",
            info.id,
            engine.value,
            detected.value,
            detected.value,
            info.id,
            detected.value,
        )
        await pool.close()
        return await self._create_read_pool(info, traits(detected))

    async def _create_read_pool(self, info: ShardInfo, engine: EngineTraits) -> asyncpg.Pool:
        """A read pool whose connections have the engine's settings (plan_cache_mode)."""
        o = self._options
        pool: asyncpg.Pool = await asyncpg.create_pool(
            asyncpg_dsn(info.dsn),
            connect=lambda dsn, **kw: self._connect(info, dsn, **kw),
            min_size=1,
            max_size=o.read_pool_size,
            timeout=o.connect_timeout,
            reset=_reset_connection,
            server_settings={
                "statement_timeout": str(o.statement_timeout_ms),
                "application_name": f"meridian:{info.id}:read",
                **engine.read_pool_settings,
            },
        )
        return pool

    def engine(self, shard_id: str, *, check: bool = True) -> AsyncEngine:
        """The shard's engine; raises at once if the shard is known to be down (unless
        ``check`` is false: a caller that only reports, such as readiness)."""
        if check:
            self.check_breaker(shard_id)
        engine = self._engines.get(shard_id)
        if engine is None:
            info = self._shards.get(shard_id)
            if info is None:
                raise UnknownShardError(shard_id)
            engine = self._create(info)
            self._engines[shard_id] = engine
        return engine

    def mark_down(self, shard_id: str) -> ShardUnavailableError:
        """A connection to the shard failed: one failure opens its breaker (a refused
        or timed-out connect is the server's state, not one query's bad luck)."""
        breaker = self._breakers.get(shard_id)
        if breaker is None:
            breaker = CircuitBreaker(failure_threshold=1, cooldown=self._options.cooldown)
            self._breakers[shard_id] = breaker
        breaker.failure()
        return ShardUnavailableError(shard_id, retry_after=self._options.cooldown)

    def mark_up(self, shard_id: str) -> None:
        breaker = self._breakers.get(shard_id)
        if breaker is not None:
            breaker.success()

    async def _connect(self, info: ShardInfo, dsn: str, **kwargs: Any) -> asyncpg.Connection:
        """Every new connection to a shard, for the read pools and the engines alike: a
        refusal is the shard being unavailable (503), not a failed query (500)."""
        try:
            conn: asyncpg.Connection = await asyncpg.connect(dsn, **kwargs)
        except asyncpg.PostgresError as exc:
            if exc.sqlstate in REFUSED_AT_CONNECT:
                raise self.mark_down(info.id) from exc
            if exc.sqlstate in BUSY_AT_CONNECT:
                raise ShardUnavailableError(info.id, retry_after=1.0) from exc
            raise
        return conn

    def _create(self, info: ShardInfo) -> AsyncEngine:
        o = self._options

        async def connect() -> asyncpg.Connection:
            return await self._connect(
                info,
                asyncpg_dsn(info.dsn),
                timeout=o.connect_timeout,
                server_settings={
                    "statement_timeout": str(o.statement_timeout_ms),
                    "application_name": f"meridian:{info.id}",
                },
            )

        return create_async_engine(
            info.dsn,
            async_creator=connect,
            pool_size=o.pool_size,
            max_overflow=o.max_overflow,
            pool_timeout=o.pool_timeout,
            # Connections that died with the server are noticed on use and replaced;
            # a pre-ping would cost a round trip on every checkout.
            pool_pre_ping=False,
            # Parameters can hold password hashes and personal data: keep them out of
            # exception messages and logs.
            hide_parameters=True,
        )

    async def dispose(self) -> None:
        engines, self._engines = self._engines, {}
        pools, self._read_pools = self._read_pools, {}
        await asyncio.gather(
            *(e.dispose() for e in engines.values()), *(p.close() for p in pools.values())
        )


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """On release: end a transaction left open (it would carry the tenant's SET LOCAL).

    asyncpg's default reset costs a round trip on every release (RESET ALL, UNLISTEN,
    ...); the reader only ever leaves transaction state behind, so this is the whole reset.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")
