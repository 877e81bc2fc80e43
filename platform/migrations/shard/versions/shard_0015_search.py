"""search (being written)

Revision ID: shard_0015
Revises: shard_0014
"""

from __future__ import annotations

revision = "shard_0015"
down_revision = "shard_0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
