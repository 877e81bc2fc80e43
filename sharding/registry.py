"""Registering shards in the control plane's topology table."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from sharding.models import Shard


async def upsert_shard(
    conn: AsyncConnection,
    *,
    shard_id: str,
    region: str,
    dsn: str,
    admin_dsn: str,
    capacity: int,
) -> None:
    """Add a shard, or update where it lives (its state is left alone)."""
    stmt = pg_insert(Shard).values(
        id=shard_id, region=region, dsn=dsn, admin_dsn=admin_dsn, capacity=capacity
    )
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[Shard.id],
            set_={
                "dsn": stmt.excluded.dsn,
                "admin_dsn": stmt.excluded.admin_dsn,
                "region": stmt.excluded.region,
                "capacity": stmt.excluded.capacity,
            },
        )
    )
