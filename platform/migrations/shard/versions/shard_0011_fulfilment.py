"""fulfilment: the tenant's saga steps, the sagas run when an opportunity is won

``fulfilment_unfinished`` lists the sagas not yet at an end (ids only): the recovery job
reads it across the shard's tenants with ``SET LOCAL app.fulfilment_sweep = 'on'``, which
its policy honours as ``event_relay``'s honours ``app.relay``; every other table keeps the
tenant policy alone.

Revision ID: shard_0011
Revises: shard_0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from meridian.migrate import lay_out_tables

revision = "shard_0011"
down_revision = "shard_0010"
branch_labels = None
depends_on = None

TENANT = "tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid"
SWEEP = f"({TENANT}) OR current_setting('app.fulfilment_sweep', true) = 'on'"
SAGA_STATES = "'running', 'compensating', 'completed', 'compensated', 'failed'"
STEP_STATES = "'pending', 'running', 'completed', 'failed', 'compensating', 'compensated'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[object]:
    if nullable:
        return sa.Column(name, sa.DateTime(timezone=True), nullable=True)
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    app = _ident(op.get_context().config.attributes["app_role"])
    op.create_table(
        "fulfilment_config",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("steps", JSONB(), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_fulfilment_config")),
    )
    op.create_index("uq_fulfilment_config_tenant", "fulfilment_config", ["tenant_id"], unique=True)
    op.create_table(
        "fulfilment_saga",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("opportunity_id", sa.Uuid(), nullable=False),
        sa.Column("won_event_id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("opportunity", JSONB(), nullable=False),
        sa.Column("config_version", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _timestamp("finished_at", nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.CheckConstraint(f"state IN ({SAGA_STATES})", name=op.f("ck_fulfilment_saga_state")),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_fulfilment_saga")),
    )
    op.create_index(
        "uq_fulfilment_saga_won_event",
        "fulfilment_saga",
        ["tenant_id", "won_event_id"],
        unique=True,
    )
    op.create_index(
        "ix_fulfilment_saga_opportunity",
        "fulfilment_saga",
        ["tenant_id", "opportunity_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "fulfilment_step",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("saga_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("action", JSONB(), nullable=False),
        sa.Column("compensation", JSONB(), nullable=False),
        sa.Column("timeout", sa.Float(), nullable=False),
        sa.Column("max_attempts", sa.SmallInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("compensation_attempts", sa.SmallInteger(), server_default="0", nullable=False),
        _timestamp("started_at", nullable=True),
        _timestamp("completed_at", nullable=True),
        _timestamp("compensated_at", nullable=True),
        _timestamp("updated_at"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("result", JSONB(), nullable=True),
        sa.CheckConstraint(f"state IN ({STEP_STATES})", name=op.f("ck_fulfilment_step_state")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "saga_id"],
            ["fulfilment_saga.tenant_id", "fulfilment_saga.id"],
            name="fk_fulfilment_step_saga",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_fulfilment_step")),
    )
    op.create_index(
        "uq_fulfilment_step_position",
        "fulfilment_step",
        ["tenant_id", "saga_id", "position"],
        unique=True,
    )
    op.create_table(
        "fulfilment_unfinished",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        _timestamp("since"),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_fulfilment_unfinished")),
    )
    # Citus: distributed on tenant_id, colocated with the others (a no-op on PostgreSQL).
    lay_out_tables(
        "fulfilment_config", "fulfilment_saga", "fulfilment_step", "fulfilment_unfinished"
    )
    for table, policy in (
        ("fulfilment_config", TENANT),
        ("fulfilment_saga", TENANT),
        ("fulfilment_step", TENANT),
        ("fulfilment_unfinished", SWEEP),
    ):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} USING ({policy}) WITH CHECK ({TENANT})"
        )
    # The configuration is replaced in place; sagas and their steps are kept (history).
    op.execute(f"GRANT SELECT, INSERT ON fulfilment_config TO {app}")
    op.execute(f"GRANT UPDATE (steps, updated_at, version) ON fulfilment_config TO {app}")
    op.execute(f"GRANT SELECT, INSERT ON fulfilment_saga TO {app}")
    op.execute(
        f"GRANT UPDATE (state, error, updated_at, finished_at, version) ON fulfilment_saga TO {app}"
    )
    op.execute(f"GRANT SELECT, INSERT ON fulfilment_step TO {app}")
    op.execute(
        "GRANT UPDATE (state, attempts, compensation_attempts, started_at, completed_at, "
        f"compensated_at, updated_at, last_error, result) ON fulfilment_step TO {app}"
    )
    op.execute(f"GRANT SELECT, INSERT, DELETE ON fulfilment_unfinished TO {app}")


def downgrade() -> None:
    op.drop_table("fulfilment_unfinished")
    op.drop_table("fulfilment_step")
    op.drop_table("fulfilment_saga")
    op.drop_table("fulfilment_config")
