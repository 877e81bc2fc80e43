"""The process-wide runtime: engines, router, cache, directory, keys — built at start-up.

The composition root: it builds the oauth domain's token services and takes the users
domain's actor query, so the request kit (``meridian.deps``, ``meridian.identity``) uses
them through this object without importing a domain."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from authz.enforcer import EnforcerRegistry
from authz.store import PolicyStore
from authz.watcher import PolicyWatcher
from cache.core import AnyRedis, Policy, TwoLevelCache
from cache.metrics import CacheMetrics
from cache.ratelimit import RateLimiter
from meridian.directory import CachedDirectory
from meridian.events import outbox
from meridian.metrics import Metrics
from meridian.oauth.keys import KeyStore
from meridian.oauth.notbefore import NotBeforeStore
from meridian.oauth.server import MeridianAuthorizationServer
from meridian.oauth.verifier import TokenVerifier
from meridian.settings import Settings
from meridian.users.repository import ActorRow, UserRepository
from primitives.breaker import CircuitBreaker
from sharding.bulkhead import TenantBulkhead
from sharding.driver import MoveDriver
from sharding.engine import ShardEngine
from sharding.engines import PoolOptions, ShardEngines, ShardInfo
from sharding.models import Shard
from sharding.mover import MoveOptions, Mover
from sharding.registry import upsert_shard
from sharding.router import ShardRouter
from tenancy.context import TenantContext
from tenancy.directory import TenantDirectory
from tenancy.keyring import SESSION_KEYRING, TenantKeyring
from tenancy.models import DirectoryEntry

log = logging.getLogger("meridian.runtime")


@dataclass
class Runtime:
    settings: Settings
    control: AsyncEngine
    engines: ShardEngines
    router: ShardRouter
    directory: CachedDirectory
    keys: KeyStore
    verifier: TokenVerifier
    oauth: MeridianAuthorizationServer
    revocations: NotBeforeStore  # emergency revocation: per-user/tenant not-before
    cache: TwoLevelCache
    metrics: Metrics
    # Capability checks: one Casbin enforcer per tenant, changes announced over Redis.
    policies: PolicyStore
    authz: EnforcerRegistry
    policy_watcher: PolicyWatcher
    # Tenant data keys for field encryption (unwrapped keys in this process only).
    keyring: TenantKeyring
    # A user's role and state on the tenant's shard, read by meridian.identity for
    # every user token (behind the cache).
    load_actor: Callable[[asyncpg.Connection, UUID, UUID], Awaitable[ActorRow | None]]
    # The same read as one statement for ShardRouter.read_one ($1: the user's id), used
    # where the shard reads that way (identity picks by ShardRouter.read_strategy).
    actor_sql: Callable[[], str]
    # Kinds whose single-record reads are cached, and how (see record_policies()).
    record_cache: dict[str, Policy] = field(default_factory=dict)
    list_cache: dict[str, Policy] = field(default_factory=dict)
    redis: AnyRedis | None = None
    # The API's rate limits (meridian.web.ratelimit); None when they are off.
    limiter: RateLimiter | None = None
    # Tenant moves between shards: driven in the background (the API also sweeps for
    # moves nobody drives: start_moving()).
    moves: MoveDriver = field(init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        # First: without a key-encryption key nothing may start (KeyConfigError).
        key_provider = settings.key_provider()
        control = create_async_engine(
            settings.control_dsn,
            pool_size=settings.control_pool_size,
            max_overflow=10,
            pool_timeout=5,
            connect_args={"timeout": 5},
        )
        engines = ShardEngines(
            [],
            PoolOptions(
                pool_size=settings.shard_pool_size,
                read_pool_size=settings.shard_pool_size,
                connect_timeout=settings.shard_connect_timeout,
                cooldown=settings.shard_cooldown,
            ),
        )
        keys = KeyStore(
            control,
            token_ttl=settings.access_token_ttl,
            refresh_interval=settings.key_refresh_interval,
        )
        redis = connect_redis(settings)
        # One registry per app, so several apps in one process (tests) do not collide.
        registry = CollectorRegistry()
        active = settings.active_tenants
        cache = TwoLevelCache(
            redis,
            l1_max_entries=settings.cache_l1_max_entries,
            # Directory entry, not-before times (tenant, user) and actor per tenant.
            held_max_entries=4 * active,
            generation_hold=settings.tenant_state_hold,
            op_timeout=settings.cache_op_timeout,
            breaker=redis_breaker(settings),
            metrics=CacheMetrics(registry),
        )
        policies = PolicyStore(control)
        authz = EnforcerRegistry(
            policies,
            max_tenants=settings.authz_max_tenants or active,
            ttl=settings.authz_policy_ttl,
            hold=settings.authz_policy_hold,
        )
        keyring = TenantKeyring(
            control,
            key_provider,
            ttl=settings.keyring_ttl,
            versions_ttl=settings.key_versions_ttl,
            max_tenants=active,
        )
        rt = cls(
            settings=settings,
            control=control,
            engines=engines,
            router=ShardRouter(
                engines,
                one_statement_reads=settings.single_statement_reads,
                write_hold=settings.move_write_hold,
                # Custom fields marked sensitive are sealed where every write of a
                # record goes through, its repository (crud.custom).
                session_info={SESSION_KEYRING: keyring},
                bulkhead=TenantBulkhead(
                    settings.tenant_connections or max(1, settings.shard_pool_size // 2),
                    wait=settings.tenant_connections_wait,
                ),
            ),
            directory=CachedDirectory(
                TenantDirectory(control),
                cache,
                l1_ttl=settings.directory_ttl,
                hold=settings.tenant_state_hold,
            ),
            keys=keys,
            verifier=TokenVerifier(
                keys,
                issuer=settings.issuer,
                audience=settings.audience,
                max_tokens=5 * active,
            ),
            oauth=MeridianAuthorizationServer(
                keys,
                issuer=settings.issuer,
                audience=settings.audience,
                ttl=settings.access_token_ttl,
                password_grant=settings.password_grant,
            ),
            revocations=NotBeforeStore(control, cache, hold=settings.tenant_state_hold),
            cache=cache,
            metrics=Metrics(registry, top_tenants=settings.metrics_top_tenants),
            policies=policies,
            authz=authz,
            policy_watcher=PolicyWatcher(redis, authz),
            keyring=keyring,
            load_actor=UserRepository.fetch_actor,
            actor_sql=UserRepository.actor_sql,
            record_cache=record_policies(settings),
            list_cache=list_policies(settings),
            redis=redis,
            limiter=(
                RateLimiter(
                    redis,
                    sync_interval=settings.rate_limit_sync_interval,
                    op_timeout=settings.rate_limit_timeout,
                    breaker=redis_breaker(settings),
                )
                if settings.rate_limits
                else None
            ),
        )
        rt.moves = MoveDriver(
            rt.mover(),
            control,
            sweep_interval=settings.move_sweep_interval,
        )
        await cache.start()
        if rt.limiter is not None:
            rt.limiter.start()
        templates_changed = await policies.sync_templates()
        await rt.policy_watcher.start()
        if templates_changed:
            await rt.policy_watcher.publish_templates_changed()
        await rt.register_configured_shards()
        await rt.reload_topology()
        await keys.ensure_active_key()
        rt._tasks.append(asyncio.create_task(rt._refresh_loop()))
        rt._tasks.append(asyncio.create_task(rt._key_refresh_loop()))
        return rt

    def mover(self, *, announce: bool = True, options: MoveOptions | None = None) -> Mover:
        """A mover of this platform's tenants. Under the fence it numbers the tenant's
        waiting events on the source (a target numbers from its own sequence, which
        knows nothing of the source's). ``announce``: tell every instance when the
        tenant's directory entry changes."""
        return Mover(
            self.control,
            invalidate=self.directory.invalidate if announce else None,
            options=options,
            on_fence=(outbox.SETTLE,),
        )

    def start_moving(self) -> None:
        """Sweep for unfinished moves nobody drives (API instances; a CLI process only
        drives the moves it is asked to)."""
        self.moves.start()

    async def stop(self) -> None:
        await self.moves.stop()
        if self.limiter is not None:
            await self.limiter.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.keyring.forget()
        await self.policy_watcher.close()
        await self.cache.close()
        await self.engines.dispose()
        await self.control.dispose()
        if self.redis is not None:
            await self.redis.aclose()

    async def register_configured_shards(self) -> None:
        """Shards named in settings are upserted into the topology (DSNs may change)."""
        await register_shards(self.control, self.settings)

    async def reload_topology(self) -> list[ShardInfo]:
        async with self.control.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        Shard.id,
                        Shard.region,
                        Shard.dsn,
                        Shard.state,
                        Shard.capacity,
                        Shard.dedicated,
                        Shard.engine,
                    )
                )
            ).all()
        shards = [
            ShardInfo(
                r.id, r.region, r.dsn, r.state, r.capacity, r.dedicated, ShardEngine(r.engine)
            )
            for r in rows
        ]
        self.engines.set_topology(shards)
        return shards

    async def tenant_counts(self) -> dict[str, int]:
        async with self.control.connect() as conn:
            rows = (
                await conn.execute(
                    select(DirectoryEntry.shard_id, func.count()).group_by(DirectoryEntry.shard_id)
                )
            ).all()
        return {r[0]: r[1] for r in rows}

    async def refresh_tenant(self, tenant: TenantContext) -> TenantContext | None:
        """Called when a shard says our directory entry is stale: drop it, read again."""
        await self.directory.invalidate(tenant.tenant_id)
        fresh = await self.directory.resolve(tenant.tenant_id)
        if fresh is not None and fresh.shard_id not in self.engines.shards:
            await self.reload_topology()
        return fresh

    async def announce_policy(self, tenant_id: UUID, version: int) -> None:
        """After a committed policy change: apply it here now, and tell other instances."""
        self.authz.notice(tenant_id, version)
        await self.policy_watcher.publish(tenant_id, version)

    async def _refresh_loop(self) -> None:
        # The topology changes rarely; a periodic reload keeps every instance in step.
        while True:
            await asyncio.sleep(30)
            try:
                await self.reload_topology()
            except Exception:
                log.warning("periodic topology refresh failed", exc_info=True)

    async def _key_refresh_loop(self) -> None:
        # Key rotation (`meridian keys rotate`) reaches every instance within this period.
        while True:
            await asyncio.sleep(self.settings.key_refresh_interval)
            try:
                await self.keys.refresh()
            except Exception:
                log.warning("periodic signing-key refresh failed", exc_info=True)


def redis_breaker(settings: Settings) -> CircuitBreaker:
    """The breaker in front of Redis of each of its users (the cache, the rate limits):
    open after 3 failures in a row, or timeouts alone for ``cache_timeout_window``."""
    return CircuitBreaker(
        failure_threshold=3,
        cooldown=settings.cache_cooldown,
        timeout_window=settings.cache_timeout_window,
    )


def connect_redis(settings: Settings) -> AnyRedis | None:
    """A Redis (or Redis Cluster) client; None runs the cache on L1 alone."""
    if not settings.redis_url:
        return None
    # Short socket timeouts: a Redis that hangs must not hold requests (the cache's
    # breaker and per-operation timeout take it out of the path).
    if settings.redis_cluster:
        return RedisCluster.from_url(
            settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
    return Redis.from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)


async def register_shards(control: AsyncEngine, settings: Settings) -> None:
    """Upsert the shards the settings name (MERIDIAN_SHARDS, a dev.json) into the
    topology, so their DSNs follow the configuration; at start-up and from the CLI."""
    if not settings.shards:
        return
    async with control.begin() as conn:
        for s in settings.shards:
            await upsert_shard(
                conn,
                shard_id=s.id,
                region=s.region,
                dsn=s.dsn,
                admin_dsn=s.admin_dsn,
                capacity=s.capacity,
                dedicated=s.dedicated,
                engine=s.engine,
            )


def record_policies(settings: Settings) -> dict[str, Policy]:
    """Which records are cached. Contacts and leads stay out of Redis: their email and
    phone are personal data, which is kept out of shared caches."""
    if not settings.cache_records:
        return {}
    shared = Policy(ttl=settings.cache_record_ttl, l1_ttl=settings.cache_record_l1_ttl)
    local = Policy(
        ttl=settings.cache_record_l1_ttl, l1_ttl=settings.cache_record_l1_ttl, use_l2=False
    )
    return {
        "account": shared,
        "opportunity": shared,
        "case": shared,
        "contact": local,
        "lead": local,
    }


def list_policies(settings: Settings) -> dict[str, Policy]:
    """Which list pages are cached: short-lived, and gone with any write of their kind."""
    if not settings.cache_lists:
        return {}
    shared = Policy(ttl=60, l1_ttl=5)
    local = Policy(ttl=5, l1_ttl=5, use_l2=False)
    return {
        "account": shared,
        "opportunity": shared,
        "case": shared,
        "contact": local,
        "lead": local,
    }
