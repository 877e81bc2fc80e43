"""Registering shards in the control plane's topology table."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from sharding.engine import ShardEngine
from sharding.models import Shard


async def upsert_shard(
    conn: AsyncConnection,
    *,
    shard_id: str,
    region: str,
    dsn: str,
    admin_dsn: str | None,
    capacity: int,
    dedicated: bool | None = None,
    engine: ShardEngine | None = None,
) -> None:
    """Add a shard, or update where it lives (its state is left alone).

    Without an ``admin_dsn`` a new shard migrates with its app DSN, and an existing
    shard keeps the owner DSN it has: API instances are usually given app-role DSNs
    only, and must not overwrite what the migration job registered. ``dedicated``
    likewise: None leaves an existing shard as it is (a new one is shared), and so does
    an ``engine`` of None (a new one is ``postgres``); the caller checks the engine
    against the database (``sharding.engine.agreed_engine``).
    """
    stmt = pg_insert(Shard).values(
        id=shard_id,
        region=region,
        dsn=dsn,
        admin_dsn=admin_dsn or dsn,
        capacity=capacity,
        dedicated=bool(dedicated),
        engine=(engine or ShardEngine.POSTGRES).value,
    )
    update = {
        "dsn": stmt.excluded.dsn,
        "region": stmt.excluded.region,
        "capacity": stmt.excluded.capacity,
    }
    if admin_dsn is not None:
        update["admin_dsn"] = stmt.excluded.admin_dsn
    if dedicated is not None:
        update["dedicated"] = stmt.excluded.dedicated
    if engine is not None:
        update["engine"] = stmt.excluded.engine
    await conn.execute(stmt.on_conflict_do_update(index_elements=[Shard.id], set_=update))
