"""custom_fields (being written)

Revision ID: shard_0014
Revises: shard_0013
"""

from __future__ import annotations

revision = "shard_0014"
down_revision = "shard_0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
