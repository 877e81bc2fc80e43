"""Operations shared by the CLI, ``meridian dev`` and the tests: migrate, register
shards, create platform-admin clients."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from meridian.migrate import upgrade
from meridian.oauth.clients import NewClient, create_client
from meridian.oauth.principal import SCOPE_ADMIN
from meridian.settings import Settings
from sharding.models import Shard
from sharding.registry import upsert_shard


async def migrate_all(settings: Settings) -> list[str]:
    """Control plane first, then every registered shard; returns the shard ids done."""
    await upgrade("control", settings.control_migrate_dsn, app_role=settings.app_db_role)
    await register_shards(settings)
    engine = create_async_engine(settings.control_migrate_dsn)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(Shard.id, Shard.admin_dsn).order_by(Shard.id))).all()
    finally:
        await engine.dispose()
    for row in rows:
        await upgrade("shard", row.admin_dsn, app_role=settings.app_db_role)
    return [r.id for r in rows]


async def add_shard(
    settings: Settings,
    *,
    shard_id: str,
    region: str,
    dsn: str,
    admin_dsn: str | None = None,
    capacity: int = 1000,
    dedicated: bool | None = None,
) -> None:
    """What `meridian shards add` does: migrate the shard's database (as its owner), then
    register it in the topology, so no instance sees a shard without its tables."""
    await upgrade("shard", admin_dsn or dsn, app_role=settings.app_db_role)
    engine = create_async_engine(settings.control_migrate_dsn)
    try:
        async with engine.begin() as conn:
            await upsert_shard(
                conn,
                shard_id=shard_id,
                region=region,
                dsn=dsn,
                admin_dsn=admin_dsn or dsn,
                capacity=capacity,
                dedicated=dedicated,
            )
    finally:
        await engine.dispose()


async def register_shards(settings: Settings) -> None:
    if not settings.shards:
        return
    engine = create_async_engine(settings.control_migrate_dsn)
    try:
        async with engine.begin() as conn:
            for s in settings.shards:
                await upsert_shard(
                    conn,
                    shard_id=s.id,
                    region=s.region,
                    dsn=s.dsn,
                    admin_dsn=s.admin_dsn,
                    capacity=s.capacity,
                    dedicated=s.dedicated,
                )
    finally:
        await engine.dispose()


async def create_admin_client(settings: Settings, name: str = "platform admin") -> NewClient:
    engine = create_async_engine(settings.control_migrate_dsn)
    try:
        async with engine.begin() as conn:
            return await create_client(conn, name=name, scope=SCOPE_ADMIN, tenant_id=None)
    finally:
        await engine.dispose()
