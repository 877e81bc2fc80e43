"""batch writes: an external id on every CRM record kind

``external_id`` (text, at most 255 characters, nullable) on ``account``, ``contact``,
``lead``, ``opportunity`` and ``"case"`` (quoted: CASE is an SQL keyword): the id a
record has in the client's own system, which ``POST /v1/{object}/batch`` upserts by.
Unique per tenant and kind: a partial unique index ``(tenant_id, external_id) WHERE
external_id IS NOT NULL`` on each table (it leads with the tenant, as every index does,
so Citus can enforce it on the tenant's worker). The app role may set it (UPDATE).

Revision ID: shard_0016
Revises: shard_0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "shard_0016"
down_revision = "shard_0015"
branch_labels = None
depends_on = None

TABLES = ("account", "contact", "lead", "opportunity", "case")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def upgrade() -> None:
    app = _ident(op.get_context().config.attributes["app_role"])
    for table in TABLES:
        op.add_column(table, sa.Column("external_id", sa.String(255), nullable=True))
        op.create_index(
            f"uq_{table}_external_id",
            table,
            ["tenant_id", "external_id"],
            unique=True,
            postgresql_where=sa.text("external_id IS NOT NULL"),
        )
        op.execute(f"GRANT UPDATE (external_id) ON {_ident(table)} TO {app}")


def downgrade() -> None:
    for table in TABLES:
        op.drop_index(f"uq_{table}_external_id", table_name=table)
        # Dropping the column drops the app role's column privilege with it.
        op.drop_column(table, "external_id")
