"""tenant rate limits: requests per minute overriding the tenant's plan

``rate_limit_tenant`` (the tenant's requests per minute in all) and
``rate_limit_caller`` (each of its users' and clients'), null for the plan's own
(``MERIDIAN_RATE_LIMIT_PLANS``); set by platform admins with
``PUT /admin/v1/tenants/{id}/limits``.

Revision ID: control_0011
Revises: control_0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "control_0011"
down_revision = "control_0010"
branch_labels = None
depends_on = None

COLUMNS = ("rate_limit_tenant", "rate_limit_caller")


def upgrade() -> None:
    for column in COLUMNS:
        op.add_column("tenant", sa.Column(column, sa.Integer(), nullable=True))
        op.create_check_constraint(
            f"ck_tenant_{column}",
            "tenant",
            f"{column} IS NULL OR {column} BETWEEN 1 AND 600000",
        )


def downgrade() -> None:
    for column in COLUMNS:
        op.drop_constraint(f"ck_tenant_{column}", "tenant", type_="check")
        op.drop_column("tenant", column)
