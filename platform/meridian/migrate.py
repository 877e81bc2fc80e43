"""Applies the Alembic trees: ``control`` to the control plane, ``shard`` to each shard.

Alembic runs on a sync connection lent by an async engine (its documented
connection-sharing recipe), so migrations can run inside the CLI's event loop.
Shards are migrated one after another and each is idempotent, so a failed run is
resumed by running it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import meridian

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
