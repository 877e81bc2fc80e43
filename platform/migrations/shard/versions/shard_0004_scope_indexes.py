"""indexes the record scope reads: shares by grantee, records by owner

Revision ID: shard_0004
Revises: shard_0003
Create Date: 2026-11-24 10:00:00.000000

The scope predicate looks shares up by grantee (a user, or the teams above a user); the
existing indexes key shares by record only, so each scoped query scanned all of a
tenant's shares. A user without reports reads their own records through the owner
index, which accounts and activities lacked (contacts and opportunities have one).
Plain CREATE INDEX: the tables are new or small when this runs; a large installation
would build them CONCURRENTLY outside the migration transaction first.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "shard_0004"
down_revision = "shard_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_record_share_user",
        "record_share",
        ["tenant_id", "user_id", "record_kind", "record_id"],
        unique=False,
        postgresql_where=sa.text("user_id IS NOT NULL"),
    )
    op.create_index(
        "ix_record_share_team",
        "record_share",
        ["tenant_id", "team_id", "record_kind", "record_id"],
        unique=False,
        postgresql_where=sa.text("team_id IS NOT NULL"),
    )
    op.create_index("ix_account_owner", "account", ["tenant_id", "owner_id", "id"], unique=False)
    op.create_index(
        "ix_activity_owner",
        "activity",
        ["tenant_id", "owner_id", "occurred_at", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_activity_owner", table_name="activity")
    op.drop_index("ix_account_owner", table_name="account")
    op.drop_index(
        "ix_record_share_team",
        table_name="record_share",
        postgresql_where=sa.text("team_id IS NOT NULL"),
    )
    op.drop_index(
        "ix_record_share_user",
        table_name="record_share",
        postgresql_where=sa.text("user_id IS NOT NULL"),
    )
