"""webhooks: subscriptions (secret sealed with the tenant's data key) and deliveries

A live delivery is unique per (tenant, subscription, event): an event the stream hands
out twice is delivered once. A replay's deliveries carry its ``replay_id`` and are unique
per replay. Both tables follow the shard's rules: ``tenant_id`` first in every key and
index, row-level security with the tenant policy, column-level UPDATE grants.

Revision ID: shard_0009
Revises: shard_0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from meridian.migrate import lay_out_tables

revision = "shard_0009"
down_revision = "shard_0008"
branch_labels = None
depends_on = None

TENANT = "tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _timestamps() -> list[sa.Column[object]]:
    return [
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
    ]


def upgrade() -> None:
    app = _ident(op.get_context().config.attributes["app_role"])
    op.create_table(
        "webhook",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=True),
        sa.Column("event_types", postgresql.ARRAY(sa.String(length=64)), nullable=False),
        sa.Column(
            "filter",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("kinds", postgresql.ARRAY(sa.String(length=32)), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("disabled_reason", sa.String(length=500), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("consecutive_dead", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("secret_enc", sa.LargeBinary(), nullable=False),
        sa.Column("secret_bidx", sa.LargeBinary(), nullable=True),
        sa.Column("enc_version", sa.Integer(), nullable=False),
        *_timestamps(),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_webhook")),
    )
    op.create_index("ix_webhook_created", "webhook", ["tenant_id", "created_at", "id"])
    op.create_index("ix_webhook_enabled", "webhook", ["tenant_id", "enabled"])
    op.create_table(
        "webhook_delivery",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("subscription_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("replay_id", sa.Uuid(), nullable=True),
        sa.Column(
            "status", sa.String(length=16), server_default=sa.text("'pending'"), nullable=False
        ),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("run", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("first_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=1000), nullable=True),
        sa.Column("response_excerpt", sa.Text(), nullable=True),
        *_timestamps(),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed', 'dead')",
            name=op.f("ck_webhook_delivery_status"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "subscription_id"],
            ["webhook.tenant_id", "webhook.id"],
            name="fk_webhook_delivery_subscription",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_webhook_delivery")),
    )
    op.create_index(
        "uq_webhook_delivery_event",
        "webhook_delivery",
        ["tenant_id", "subscription_id", "event_id"],
        unique=True,
        postgresql_where=sa.text("replay_id IS NULL"),
    )
    op.create_index(
        "uq_webhook_delivery_replay",
        "webhook_delivery",
        ["tenant_id", "subscription_id", "event_id", "replay_id"],
        unique=True,
        postgresql_where=sa.text("replay_id IS NOT NULL"),
    )
    op.create_index(
        "ix_webhook_delivery_list",
        "webhook_delivery",
        ["tenant_id", "subscription_id", "created_at", "id"],
    )
    op.create_index(
        "ix_webhook_delivery_status",
        "webhook_delivery",
        ["tenant_id", "subscription_id", "status", "created_at", "id"],
    )
    # Citus: distributed on tenant_id with the other tables (a no-op on PostgreSQL).
    lay_out_tables("webhook", "webhook_delivery")
    for table in ("webhook", "webhook_delivery"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} USING ({TENANT}) WITH CHECK ({TENANT})"
        )
    op.execute(f"GRANT SELECT, INSERT, DELETE ON webhook TO {app}")
    op.execute(
        "GRANT UPDATE (url, description, event_types, filter, kinds, enabled, disabled_reason,"
        " disabled_at, consecutive_dead, last_success_at, secret_enc, secret_bidx,"
        f" enc_version, updated_at, version) ON webhook TO {app}"
    )
    # Deliveries go with their subscription (the foreign key's cascade).
    op.execute(f"GRANT SELECT, INSERT, DELETE ON webhook_delivery TO {app}")
    op.execute(
        "GRANT UPDATE (status, attempts, run, first_attempt_at, last_attempt_at,"
        " next_attempt_at, delivered_at, last_status_code, last_error, response_excerpt,"
        f" updated_at) ON webhook_delivery TO {app}"
    )


def downgrade() -> None:
    op.drop_table("webhook_delivery")
    op.drop_table("webhook")
