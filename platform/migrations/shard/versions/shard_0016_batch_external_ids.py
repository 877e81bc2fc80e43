"""batch_external_ids (being written)

Revision ID: shard_0016
Revises: shard_0015
"""

from __future__ import annotations

revision = "shard_0016"
down_revision = "shard_0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
