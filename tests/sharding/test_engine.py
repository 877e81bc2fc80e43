"""A shard's engine (``sharding.engine``): what it decides, and that the topology records
the engine its database runs. Citus is not installed here: its side is checked through
the traits and the refusal of a Citus claim on a plain PostgreSQL database."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import asyncpg
import pytest

from meridian.operations import add_shard, list_shards
from sharding.engine import (
    EngineMismatchError,
    ReadStrategy,
    ShardEngine,
    agreed_engine,
    detect_engine,
    detect_engine_at,
    traits,
)
from sharding.engines import ShardEngines, ShardInfo
from tests.fixtures.databases import APP_ROLE, dsn, raw_dsn, recreate_database

if TYPE_CHECKING:
    from meridian.settings import Settings
    from tests.fixtures.databases import TestDatabases


def test_traits_per_engine() -> None:
    pg = traits(ShardEngine.POSTGRES)
    assert pg.by_id_reads is ReadStrategy.ONE_STATEMENT
    assert pg.read_pool_settings == {"plan_cache_mode": "force_generic_plan"}
    citus = traits("citus")
    assert citus.by_id_reads is ReadStrategy.TRANSACTION
    # Forced generic plans cannot be distributed by Citus: the server's default stays.
    assert "plan_cache_mode" not in citus.read_pool_settings
    with pytest.raises(ValueError, match="mysql"):
        traits("mysql")


def test_what_shard_migrations_run_per_engine() -> None:
    pg = traits(ShardEngine.POSTGRES)
    # The same revisions run unchanged on PostgreSQL: nothing is added there.
    assert pg.table_layout(["account", "tenant_residency"], ["country"]) == []
    assert pg.migration_preamble == ()
    assert pg.database_settings_sql() == []
    citus = traits(ShardEngine.CITUS)
    assert citus.migration_preamble == ("SET LOCAL citus.multi_shard_modify_mode = 'sequential'",)
    layout = citus.table_layout(["account", "tenant_residency"], ["country"])
    # The anchor first, in a group of its own; the others colocated with it.
    assert [s.split(" WHERE ")[0] for s in layout] == [
        "SELECT create_distributed_table('tenant_residency', 'tenant_id', colocate_with => 'none')",
        "SELECT create_distributed_table('account', 'tenant_id', "
        "colocate_with => 'tenant_residency')",
        "SELECT create_reference_table('country')",
    ]
    assert all("NOT EXISTS (SELECT 1 FROM pg_dist_partition" in s for s in layout)
    propagate, plans = citus.database_settings_sql()
    assert "ALTER DATABASE %I SET citus.propagate_set_commands = %L" in propagate
    assert (
        "ALTER DATABASE %I SET plan_cache_mode = %L', current_database(), 'force_custom_plan'"
        in plans
    )
    with pytest.raises(ValueError, match="plain table name"):
        citus.table_layout(["account; DROP TABLE x"])


def test_a_declared_engine_must_be_the_detected_one() -> None:
    assert agreed_engine("s", None, ShardEngine.POSTGRES) is ShardEngine.POSTGRES
    assert agreed_engine("s", "citus", ShardEngine.CITUS) is ShardEngine.CITUS
    with pytest.raises(EngineMismatchError) as err:
        agreed_engine("s", ShardEngine.CITUS, ShardEngine.POSTGRES)
    assert str(err.value) == ("shard s is declared as engine citus, but its database runs postgres")


def test_a_shard_is_postgres_unless_recorded_otherwise() -> None:
    engines = ShardEngines(
        [ShardInfo("a", "us", "dsn"), ShardInfo("b", "us", "dsn", engine=ShardEngine.CITUS)]
    )
    assert engines.shard_engine("a") is ShardEngine.POSTGRES
    assert engines.shard_engine("b") is ShardEngine.CITUS
    assert engines.traits("b") is traits(ShardEngine.CITUS)
    assert engines.shard_engine("unknown") is ShardEngine.POSTGRES


async def test_a_plain_postgresql_shard_is_detected_as_postgres(
    databases: TestDatabases,
) -> None:
    _, database = databases.shards["us-1"]
    assert await detect_engine_at(dsn(database, APP_ROLE)) is ShardEngine.POSTGRES
    conn = await asyncpg.connect(raw_dsn(database))
    try:
        assert await detect_engine(conn) is ShardEngine.POSTGRES
    finally:
        await conn.close()


async def test_shards_add_records_the_detected_engine_and_refuses_another(
    databases: TestDatabases, settings: Settings
) -> None:
    database = f"{databases.prefix}_engine_zz1"
    await recreate_database(database)
    refused_id = "engine-refused"
    with pytest.raises(EngineMismatchError, match=r"declared as engine citus.*runs postgres"):
        await add_shard(
            settings,
            shard_id=refused_id,
            region="zz",
            dsn=dsn(database, APP_ROLE),
            admin_dsn=dsn(database),
            engine="citus",
        )
    # Refused before anything was done: not registered, not migrated.
    assert refused_id not in {s["id"] for s in await list_shards(settings)}
    conn = await asyncpg.connect(raw_dsn(database))
    try:
        assert await conn.fetchval("SELECT to_regclass('alembic_version')") is None
    finally:
        await conn.close()

    recorded = await add_shard(
        settings,
        shard_id="engine-zz-1",
        region="zz",
        dsn=dsn(database, APP_ROLE),
        admin_dsn=dsn(database),
        dedicated=True,  # keeps region placement of other tests off it
    )
    assert recorded is ShardEngine.POSTGRES
    listed = {s["id"]: s for s in await list_shards(settings)}
    assert listed["engine-zz-1"]["engine"] == "postgres"
    # Naming the engine the database runs is accepted.
    again = await add_shard(
        settings,
        shard_id="engine-zz-1",
        region="zz",
        dsn=dsn(database, APP_ROLE),
        admin_dsn=dsn(database),
        engine="postgres",
    )
    assert again is ShardEngine.POSTGRES


async def _plan_cache_mode(engines: ShardEngines, shard_id: str) -> str:
    pool = await engines.read_pool(shard_id)
    mode: str = await pool.fetchval("SHOW plan_cache_mode")
    return mode


async def test_the_read_pool_follows_the_engine_its_database_runs(
    databases: TestDatabases, caplog: pytest.LogCaptureFixture
) -> None:
    _, database = databases.shards["us-1"]
    app = dsn(database, APP_ROLE)
    caplog.set_level(logging.ERROR, logger="sharding.engines")
    engines = ShardEngines(
        [
            ShardInfo("right", "us", app),
            # Recorded wrongly: the database is plain PostgreSQL.
            ShardInfo("wrong", "us", app, engine=ShardEngine.CITUS),
        ]
    )
    try:
        assert await _plan_cache_mode(engines, "right") == "force_generic_plan"
        assert not caplog.records
        assert engines.shard_engine("wrong") is ShardEngine.CITUS  # before it is checked
        assert await _plan_cache_mode(engines, "wrong") == "force_generic_plan"
        assert engines.shard_engine("wrong") is ShardEngine.POSTGRES
        assert [r.getMessage() for r in caplog.records] == [
            "shard wrong is recorded as engine citus but its database runs postgres; "
            "using postgres (record it with `meridian shards add wrong --engine postgres ...`)"
        ]
    finally:
        await engines.dispose()
