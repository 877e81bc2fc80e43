"""Alembic environment of the shard plane (run through meridian.migrate)."""

from __future__ import annotations

from alembic import context

from meridian.migrate import shard_traits
from meridian.models import shard_metadata

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=shard_metadata,
    version_table="alembic_version",
    transaction_per_migration=True,
)
engine = shard_traits(connection)
with context.begin_transaction():
    # meridian.migrate runs every revision in the one transaction it began, so these
    # SET LOCALs hold for each revision (Citus: sequential DDL, see sharding.engine).
    for statement in engine.migration_preamble:
        connection.exec_driver_sql(statement)
    for statement in engine.database_settings_sql():
        connection.exec_driver_sql(statement)
    context.run_migrations()
