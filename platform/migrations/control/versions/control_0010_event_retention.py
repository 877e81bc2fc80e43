"""tenant event retention: days a tenant's events are kept (null: the platform default)

Revision ID: control_0010
Revises: control_0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "control_0010"
down_revision = "control_0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenant", sa.Column("event_retention_days", sa.Integer(), nullable=True))
    op.create_check_constraint(
        "ck_tenant_event_retention_days",
        "tenant",
        "event_retention_days IS NULL OR event_retention_days BETWEEN 1 AND 3650",
    )


def downgrade() -> None:
    op.drop_constraint("ck_tenant_event_retention_days", "tenant", type_="check")
    op.drop_column("tenant", "event_retention_days")
