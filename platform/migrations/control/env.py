"""Alembic environment of the control plane (run through meridian.migrate)."""

from __future__ import annotations

from alembic import context

from meridian.models import control_metadata

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=control_metadata,
    version_table="alembic_version",
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
