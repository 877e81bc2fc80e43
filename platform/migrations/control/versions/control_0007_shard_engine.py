"""shard engine

A shard records the database engine it runs, ``postgres`` or ``citus``; what depends on
it (how reads run, the read pools' plan cache mode) is decided in ``sharding.engine``.

Revision ID: control_0007
Revises: control_0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "control_0007"
down_revision = "control_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "shard",
        sa.Column(
            "engine", sa.String(length=16), server_default=sa.text("'postgres'"), nullable=False
        ),
    )
    op.create_check_constraint(op.f("ck_shard_engine"), "shard", "engine IN ('postgres', 'citus')")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_shard_engine"), "shard", type_="check")
    op.drop_column("shard", "engine")
