"""The shard migrations on Citus: run by the database's owner, they distribute every
tenant table on ``tenant_id`` in one colocation group and set what the app's sessions
need; the same tree re-runs across distributed tables (DDL and DML in one transaction)."""

from __future__ import annotations

import asyncpg
import pytest
from alembic import command
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from meridian.migrate import alembic_config, upgrade
from meridian.models import shard_metadata
from meridian.operations import list_shards
from tests.citus.conftest import CITUS_SHARD, CitusApi
from tests.fixtures.databases import APP_ROLE

pytestmark = pytest.mark.slow


async def test_every_tenant_table_is_distributed_colocated_on_tenant_id(
    citus_api: CitusApi,
) -> None:
    cluster = citus_api.cluster
    conn = await asyncpg.connect(cluster.url())
    try:
        rows = await conn.fetch(
            """
            SELECT c.relname AS name, partmethod::text, colocationid,
                   column_to_column_name(logicalrelid, partkey) AS column,
                   pg_get_userbyid(c.relowner) AS owner
              FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid
            """
        )
        local = await conn.fetch(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'r'"
            " AND c.oid NOT IN (SELECT logicalrelid FROM pg_dist_partition)"
        )
        settings = await conn.fetchval(
            "SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d"
            " ON d.oid = s.setdatabase WHERE d.datname = current_database() AND setrole = 0"
        )
    finally:
        await conn.close()
    tables = {r["name"]: r for r in rows}
    assert set(tables) == set(shard_metadata.tables)
    assert {(r["partmethod"], r["column"]) for r in rows} == {("h", "tenant_id")}
    assert len({r["colocationid"] for r in rows}) == 1
    assert {r["owner"] for r in rows} == {cluster.owner}
    # Only Alembic's bookkeeping stays a local table of the coordinator.
    assert [r["relname"] for r in local] == ["alembic_version"]
    # Set by the owner as a database setting (ALTER ROLE would need CREATEROLE).
    assert "citus.propagate_set_commands=local" in settings


async def test_the_topology_records_each_shards_engine(citus_api: CitusApi) -> None:
    engines = {s["id"]: s["engine"] for s in await list_shards(citus_api.settings)}
    assert engines == {"us-1": "postgres", CITUS_SHARD: "citus"}


def _down_and_up(connection: Connection, revision: str) -> None:
    cfg = alembic_config("shard", APP_ROLE)
    cfg.attributes["connection"] = connection
    command.downgrade(cfg, revision)
    command.upgrade(cfg, "head")


async def test_revisions_rerun_on_distributed_tables(citus_api: CitusApi) -> None:
    """The last revision mixes DDL and an UPDATE on a distributed table: down and up
    again in one transaction, as the owner, then a no-op run at head."""
    owner_dsn = citus_api.cluster.dsn(citus_api.cluster.owner)
    engine = create_async_engine(owner_dsn, pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_down_and_up, "shard_0006")
    finally:
        await engine.dispose()
    await upgrade("shard", owner_dsn, app_role=APP_ROLE)
