"""dedicated shards

A shard marked dedicated holds one tenant: placement by region never picks it, and
onboarding refuses to put a second tenant on it.

Revision ID: control_0006
Revises: control_0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "control_0006"
down_revision = "control_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "shard",
        sa.Column("dedicated", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("shard", "dedicated")
