"""interaction projections: a summary of each record's activities

``interaction_summary`` holds, per contact, account and opportunity with activities,
what its lists and pages show of them: the last activity, counts per type over 30 and
90 days, the next task. The worker computes it from ``activity`` (see
meridian.projections); the app role may read, insert, update the computed columns and
delete, and never change a row's key.

Revision ID: shard_0010
Revises: shard_0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from meridian.migrate import lay_out_tables

revision = "shard_0010"
down_revision = "shard_0009"
branch_labels = None
depends_on = None

TENANT = "tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid"
# The list's sort keys of nullable times (meridian.projections.models): the same
# expressions as the list's SQL, constants included, so the planner matches them.
NEVER = "'0001-01-01 00:00:00+00'::timestamptz"
NO_TASK = "'9999-12-31 00:00:00+00'::timestamptz"
COUNTS = [
    f"{kind}_{window}"
    for window in ("30d", "90d")
    for kind in ("calls", "emails", "meetings", "notes", "tasks", "activities")
]
COMPUTED = [
    "last_activity_at",
    "last_activity_type",
    "last_activity_id",
    *COUNTS,
    "next_task_id",
    "next_task_due_at",
    "computed_at",
    "refresh_at",
]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def upgrade() -> None:
    app = _ident(op.get_context().config.attributes["app_role"])
    op.create_table(
        "interaction_summary",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("record_kind", sa.String(length=16), nullable=False),
        sa.Column("record_id", sa.Uuid(), nullable=False),
        sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_activity_type", sa.String(length=16), nullable=True),
        sa.Column("last_activity_id", sa.Uuid(), nullable=True),
        *(sa.Column(name, sa.Integer(), nullable=False) for name in COUNTS),
        sa.Column("next_task_id", sa.Uuid(), nullable=True),
        sa.Column("next_task_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refresh_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "record_kind IN ('account', 'contact', 'opportunity')",
            name=op.f("ck_interaction_summary_record_kind"),
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "record_kind", "record_id", name=op.f("pk_interaction_summary")
        ),
    )
    for window in ("30d", "90d"):
        op.create_index(
            f"ix_interaction_summary_activities_{window}",
            "interaction_summary",
            ["tenant_id", "record_kind", f"activities_{window}", "record_id"],
        )
    op.create_index(
        "ix_interaction_summary_refresh", "interaction_summary", ["tenant_id", "refresh_at"]
    )
    op.execute(
        "CREATE INDEX ix_interaction_summary_last_activity ON interaction_summary "
        f"(tenant_id, record_kind, COALESCE(last_activity_at, {NEVER}), record_id)"
    )
    op.execute(
        "CREATE INDEX ix_interaction_summary_next_task ON interaction_summary "
        f"(tenant_id, record_kind, COALESCE(next_task_due_at, {NO_TASK}), record_id)"
    )
    lay_out_tables("interaction_summary")
    op.execute("ALTER TABLE interaction_summary ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE interaction_summary FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY tenant_isolation ON interaction_summary "
        f"USING ({TENANT}) WITH CHECK ({TENANT})"
    )
    # The key columns stay immutable (no UPDATE grant), as everywhere.
    op.execute(f"GRANT SELECT, INSERT, DELETE ON interaction_summary TO {app}")
    op.execute(f"GRANT UPDATE ({', '.join(COMPUTED)}) ON interaction_summary TO {app}")


def downgrade() -> None:
    op.drop_table("interaction_summary")
