"""Applies the Alembic trees: ``control`` to the control plane, ``shard`` to each shard.

Alembic runs on a sync connection lent by an async engine (its documented
connection-sharing recipe), so migrations can run inside the CLI's event loop.
Shards are migrated one after another and each is idempotent, so a failed run is
resumed by running it again. A shard's revisions all run in one transaction (the
connection is begun here), which is what lets the engine's ``SET LOCAL`` preamble hold
for every revision (``sharding.engine.EngineTraits.migration_preamble``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from alembic import command, op
from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import meridian
from sharding.engine import DETECT_SQL, EngineTraits, engine_from, traits

Plane = Literal["control", "shard"]
MIGRATIONS = Path(meridian.__file__).resolve().parent.parent / "migrations"


def alembic_config(plane: Plane, app_role: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS / plane))
    cfg.attributes["app_role"] = app_role
    return cfg


def _upgrade(connection: Connection, cfg: Config, revision: str) -> None:
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


async def upgrade(plane: Plane, dsn: str, *, app_role: str, revision: str = "head") -> None:
    engine = create_async_engine(dsn, pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade, alembic_config(plane, app_role), revision)
    finally:
        await engine.dispose()


def shard_traits(connection: Connection) -> EngineTraits:
    """What the engine of the shard behind ``connection`` decides for its migrations."""
    return traits(engine_from(connection.exec_driver_sql(DETECT_SQL).scalar()))


def lay_out_tables(*tenant_tables: str, reference_tables: Sequence[str] = ()) -> None:
    """Called by a shard revision right after it creates tables, so every revision
    leaves its tables laid out the way the shard's engine needs them: on Citus, tenant
    tables distributed colocated on ``tenant_id`` and lookup tables (no ``tenant_id``)
    replicated as reference tables; on PostgreSQL nothing. List tables in the order the
    revision creates them (a foreign key's target first)."""
    for statement in shard_traits(op.get_bind()).table_layout(tenant_tables, reference_tables):
        op.execute(statement)
