"""The process-wide runtime: engines, router, directory, keys — built once at start-up."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from meridian.oauth.keys import KeyStore
from meridian.oauth.server import MeridianAuthorizationServer
from meridian.oauth.verifier import TokenVerifier
from meridian.settings import Settings
from sharding.engines import PoolOptions, ShardEngines, ShardInfo
from sharding.models import Shard
from sharding.registry import upsert_shard
from sharding.router import ShardRouter
from tenancy.context import TenantContext
from tenancy.directory import TenantDirectory
from tenancy.models import DirectoryEntry

log = logging.getLogger("meridian.runtime")


@dataclass
class Runtime:
    settings: Settings
    control: AsyncEngine
    engines: ShardEngines
    router: ShardRouter
    directory: TenantDirectory
    keys: KeyStore
    verifier: TokenVerifier
    oauth: MeridianAuthorizationServer
    redis: Redis | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        control = create_async_engine(
            settings.control_dsn,
            pool_size=5,
            max_overflow=10,
            pool_timeout=5,
            connect_args={"timeout": 5},
        )
        engines = ShardEngines(
            [],
            PoolOptions(
                pool_size=settings.shard_pool_size,
                connect_timeout=settings.shard_connect_timeout,
                cooldown=settings.shard_cooldown,
            ),
        )
        keys = KeyStore(control, token_ttl=settings.access_token_ttl)
        rt = cls(
            settings=settings,
            control=control,
            engines=engines,
            router=ShardRouter(engines),
            directory=TenantDirectory(control, ttl_seconds=settings.directory_ttl),
            keys=keys,
            verifier=TokenVerifier(keys, issuer=settings.issuer, audience=settings.audience),
            oauth=MeridianAuthorizationServer(
                keys,
                issuer=settings.issuer,
                audience=settings.audience,
                ttl=settings.access_token_ttl,
            ),
        )
        if settings.redis_url:
            rt.redis = Redis.from_url(
                settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
            )
        await rt.register_configured_shards()
        await rt.reload_topology()
        await keys.ensure_active_key()
        rt._tasks.append(asyncio.create_task(rt._refresh_loop()))
        return rt

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.engines.dispose()
        await self.control.dispose()
        if self.redis is not None:
            await self.redis.aclose()

    async def register_configured_shards(self) -> None:
        """Shards named in settings are upserted into the topology (DSNs may change)."""
        if not self.settings.shards:
            return
        async with self.control.begin() as conn:
            for s in self.settings.shards:
                await upsert_shard(
                    conn,
                    shard_id=s.id,
                    region=s.region,
                    dsn=s.dsn,
                    admin_dsn=s.admin_dsn or s.dsn,
                    capacity=s.capacity,
                )

    async def reload_topology(self) -> list[ShardInfo]:
        async with self.control.connect() as conn:
            rows = (
                await conn.execute(
                    select(Shard.id, Shard.region, Shard.dsn, Shard.state, Shard.capacity)
                )
            ).all()
        shards = [ShardInfo(r.id, r.region, r.dsn, r.state, r.capacity) for r in rows]
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
        self.directory.invalidate(tenant.tenant_id)
        fresh = await self.directory.resolve(tenant.tenant_id)
        if fresh is not None and fresh.shard_id not in self.engines.shards:
            await self.reload_topology()
        return fresh

    async def _refresh_loop(self) -> None:
        # Topology and keys change rarely; a periodic reload keeps every instance in step.
        while True:
            await asyncio.sleep(30)
            try:
                await self.reload_topology()
                await self.keys.refresh()
            except Exception:
                log.warning("periodic topology/key refresh failed", exc_info=True)
