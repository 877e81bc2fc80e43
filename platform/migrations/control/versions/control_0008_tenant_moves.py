"""tenant moves

One row per online move of a tenant between shards (``sharding.mover``): the state the
mover reached, so any process can resume it, and what an admin reads about it (rows
copied per table, replication lag, the write freeze, the error). A tenant has at most
one move that is not finished (done, failed or cancelled).

Revision ID: control_0008
Revises: control_0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "control_0008"
down_revision = "control_0007"
branch_labels = None
depends_on = None

STATES = (
    "planned",
    "copying",
    "catching_up",
    "verifying",
    "freezing",
    "switched",
    "cleaning",
    "done",
    "failed",
    "cancelled",
)
_IN = ", ".join(f"'{s}'" for s in STATES)


def upgrade() -> None:
    op.create_table(
        "tenant_move",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("source_shard_id", sa.String(length=63), nullable=False),
        sa.Column("target_shard_id", sa.String(length=63), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("rollback_to", sa.String(length=16), nullable=True),
        sa.Column(
            "progress",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("lag_bytes", sa.BigInteger(), nullable=True),
        sa.Column("fenced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("freeze_ms", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(f"state IN ({_IN})", name=op.f("ck_tenant_move_state")),
        sa.CheckConstraint(
            "rollback_to IN ('failed', 'cancelled')", name=op.f("ck_tenant_move_rollback_to")
        ),
        sa.CheckConstraint(
            "source_shard_id <> target_shard_id", name=op.f("ck_tenant_move_two_shards")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name=op.f("fk_tenant_move_tenant_id_tenant"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["source_shard_id"], ["shard.id"], name=op.f("fk_tenant_move_source_shard_id_shard")
        ),
        sa.ForeignKeyConstraint(
            ["target_shard_id"], ["shard.id"], name=op.f("fk_tenant_move_target_shard_id_shard")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_move")),
    )
    op.create_index(op.f("ix_tenant_move_tenant_id"), "tenant_move", ["tenant_id"])
    # Two concurrent moves of one tenant: the second INSERT fails on this index.
    op.create_index(
        "uq_tenant_move_unfinished",
        "tenant_move",
        ["tenant_id"],
        unique=True,
        postgresql_where=sa.text("state NOT IN ('done', 'failed', 'cancelled')"),
    )
    role = op.get_context().config.attributes["app_role"]
    app = '"' + role.replace('"', '""') + '"'
    # No DELETE: a move's row is its record.
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON tenant_move TO {app}")


def downgrade() -> None:
    op.drop_index(
        "uq_tenant_move_unfinished",
        table_name="tenant_move",
        postgresql_where=sa.text("state NOT IN ('done', 'failed', 'cancelled')"),
    )
    op.drop_index(op.f("ix_tenant_move_tenant_id"), table_name="tenant_move")
    op.drop_table("tenant_move")
