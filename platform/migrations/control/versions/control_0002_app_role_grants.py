"""Grants the app role DML on the control plane (it owns nothing).

Revision ID: control_0002
Revises: control_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "control_0002"
down_revision = "control_0001"
branch_labels = None
depends_on = None

TABLES = ("tenant", "tenant_directory", "shard", "oauth_client", "signing_key")


def upgrade() -> None:
    role = op.get_context().config.attributes["app_role"]
    bind = op.get_bind()
    if not bind.scalar(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}):
        raise RuntimeError(
            f"database role {role!r} does not exist: create it (LOGIN NOBYPASSRLS) first"
        )
    app = '"' + role.replace('"', '""') + '"'
    op.execute(f"GRANT USAGE ON SCHEMA public TO {app}")
    for table in TABLES:
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {app}")


def downgrade() -> None:
    role = op.get_context().config.attributes["app_role"]
    app = '"' + role.replace('"', '""') + '"'
    for table in TABLES:
        op.execute(f"REVOKE ALL ON {table} FROM {app}")
