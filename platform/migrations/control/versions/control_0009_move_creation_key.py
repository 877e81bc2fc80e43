"""tenant moves: the Idempotency-Key of the request that planned the move

``POST /admin/v1/tenants/{id}/moves`` retried with the same key answers with the move
it planned the first time (the fingerprint tells a reuse of the key for another
request, a 422).

Revision ID: control_0009
Revises: control_0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "control_0009"
down_revision = "control_0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenant_move", sa.Column("creation_key", sa.String(255), nullable=True))
    op.add_column("tenant_move", sa.Column("creation_fingerprint", sa.LargeBinary(), nullable=True))
    op.create_unique_constraint(
        "uq_tenant_move_creation_key", "tenant_move", ["tenant_id", "creation_key"]
    )


def downgrade() -> None:
    op.drop_constraint("uq_tenant_move_creation_key", "tenant_move", type_="unique")
    op.drop_column("tenant_move", "creation_fingerprint")
    op.drop_column("tenant_move", "creation_key")
