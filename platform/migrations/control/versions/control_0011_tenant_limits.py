"""tenant limits: a tenant's own limits, overriding its plan's

``tenant.limits`` (JSONB object, empty by default): by name, the limits a platform admin
set for the tenant instead of its plan's (``MERIDIAN_PLANS``): ``tenant_per_minute``,
``caller_per_minute``, ``calls_per_day``, ``records_per_object``, ``stored_bytes``; set
with ``PUT /admin/v1/tenants/{id}/limits``.

Revision ID: control_0011
Revises: control_0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "control_0011"
down_revision = "control_0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "tenant",
        sa.Column("limits", JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
    )
    op.create_check_constraint("ck_tenant_limits", "tenant", "jsonb_typeof(limits) = 'object'")


def downgrade() -> None:
    op.drop_constraint("ck_tenant_limits", "tenant", type_="check")
    op.drop_column("tenant", "limits")
