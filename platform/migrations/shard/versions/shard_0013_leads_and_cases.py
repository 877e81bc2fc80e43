"""leads and support cases: the top of the funnel and the service desk

- ``lead``: a prospect not yet qualified (email and phone sealed, with blind indexes),
  its score and the score's explanation, and once converted the account, contact and
  opportunity it became;
- ``lead_scoring_rule``: a tenant's scoring rules (points for a field condition or for a
  count of activities), data rather than DDL;
- ``"case"`` (quoted: CASE is an SQL keyword): a support case, linked to a contact
  and an account, with its priority, its due time and its resolution;
- ``activity`` gains ``lead_id`` and ``case_id`` (their timelines, lead scoring's
  activity counts), deleted with their lead or case like the other links;
- ``record_share`` may name leads and cases.

Revision ID: shard_0013
Revises: shard_0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from meridian.migrate import lay_out_tables

revision = "shard_0013"
down_revision = "shard_0012"
branch_labels = None
depends_on = None

TENANT = "tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid"
LEAD_STATUSES = "'new', 'working', 'nurturing', 'qualified', 'unqualified', 'converted'"
LEAD_SOURCES = (
    "'web', 'referral', 'event', 'partner', 'advertising', 'cold_call', 'social', 'other'"
)
CASE_STATUSES = "'new', 'open', 'pending', 'on_hold', 'resolved', 'closed'"
CASE_PRIORITIES = "'low', 'normal', 'high', 'urgent'"
CASE_ORIGINS = "'email', 'phone', 'web', 'chat', 'other'"
SHARE_KINDS_BEFORE = "'account', 'contact', 'opportunity'"
SHARE_KINDS = "'account', 'contact', 'opportunity', 'lead', 'case'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _record_columns() -> list[sa.Column[object]]:
    """What every record has (meridian.crud.model.Record), after its own columns."""
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
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
    ]


def _indexes(table: str, *columns: str) -> None:
    # Keyset pages: (tenant_id, sort column, id).
    for column in columns:
        op.create_index(f"ix_{table}_{column}", table, ["tenant_id", column, "id"])


def upgrade() -> None:
    app = _ident(op.get_context().config.attributes["app_role"])
    op.create_table(
        "lead",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("first_name", sa.String(100), nullable=True),
        sa.Column("last_name", sa.String(100), nullable=False),
        sa.Column("company", sa.String(255), nullable=True),
        sa.Column("title", sa.String(200), nullable=True),
        sa.Column("email_enc", sa.LargeBinary(), nullable=True),
        sa.Column("email_bidx", sa.LargeBinary(), nullable=True),
        sa.Column("phone_enc", sa.LargeBinary(), nullable=True),
        sa.Column("phone_bidx", sa.LargeBinary(), nullable=True),
        sa.Column("enc_version", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(16), nullable=True),
        sa.Column("status", sa.String(16), server_default="new", nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=True),
        sa.Column("score", sa.Integer(), server_default="0", nullable=False),
        sa.Column("score_details", JSONB(), server_default="[]", nullable=False),
        sa.Column("converted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("converted_account_id", sa.Uuid(), nullable=True),
        sa.Column("converted_contact_id", sa.Uuid(), nullable=True),
        sa.Column("converted_opportunity_id", sa.Uuid(), nullable=True),
        *_record_columns(),
        sa.CheckConstraint(f"status IN ({LEAD_STATUSES})", name=op.f("ck_lead_status")),
        sa.CheckConstraint(f"source IN ({LEAD_SOURCES})", name=op.f("ck_lead_source")),
        sa.CheckConstraint(
            "(status = 'converted') = (converted_at IS NOT NULL)", name=op.f("ck_lead_converted")
        ),
        sa.CheckConstraint(
            "enc_version IS NOT NULL OR (email_enc IS NULL AND phone_enc IS NULL)",
            name=op.f("ck_lead_enc_version"),
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_lead")),
    )
    _indexes("lead", "last_name", "company", "owner_id", "status", "score")
    _indexes("lead", "created_at", "updated_at", "enc_version")
    op.create_index("ix_lead_email_bidx", "lead", ["tenant_id", "email_bidx"])
    op.create_index("ix_lead_phone_bidx", "lead", ["tenant_id", "phone_bidx"])

    op.create_table(
        "lead_scoring_rule",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("condition", JSONB(), nullable=False),
        sa.Column("active", sa.Boolean(), server_default="true", nullable=False),
        *_record_columns(),
        sa.CheckConstraint(
            "points BETWEEN -1000 AND 1000", name=op.f("ck_lead_scoring_rule_points")
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_lead_scoring_rule")),
    )
    op.create_index(
        "uq_lead_scoring_rule_name", "lead_scoring_rule", ["tenant_id", "name"], unique=True
    )
    _indexes("lead_scoring_rule", "created_at")

    op.create_table(
        "case",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), server_default="new", nullable=False),
        sa.Column("priority", sa.String(8), server_default="normal", nullable=False),
        sa.Column("origin", sa.String(8), nullable=True),
        sa.Column("contact_id", sa.Uuid(), nullable=True),
        sa.Column("account_id", sa.Uuid(), nullable=True),
        sa.Column("owner_id", sa.Uuid(), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolution", sa.Text(), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        *_record_columns(),
        sa.CheckConstraint(f"status IN ({CASE_STATUSES})", name=op.f("ck_case_status")),
        sa.CheckConstraint(f"priority IN ({CASE_PRIORITIES})", name=op.f("ck_case_priority")),
        sa.CheckConstraint(f"origin IN ({CASE_ORIGINS})", name=op.f("ck_case_origin")),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_case")),
    )
    _indexes("case", "contact_id", "account_id", "owner_id", "status", "priority", "due_at")
    _indexes("case", "created_at", "updated_at")

    op.add_column("activity", sa.Column("lead_id", sa.Uuid(), nullable=True))
    op.add_column("activity", sa.Column("case_id", sa.Uuid(), nullable=True))
    op.drop_constraint(op.f("ck_activity_linked"), "activity", type_="check")
    op.create_check_constraint(
        op.f("ck_activity_linked"),
        "activity",
        "contact_id IS NOT NULL OR account_id IS NOT NULL OR opportunity_id IS NOT NULL "
        "OR lead_id IS NOT NULL OR case_id IS NOT NULL",
    )
    op.drop_constraint(op.f("ck_record_share_record_kind"), "record_share", type_="check")
    op.create_check_constraint(
        op.f("ck_record_share_record_kind"), "record_share", f"record_kind IN ({SHARE_KINDS})"
    )

    # Citus: distributed on tenant_id, colocated with the others (a no-op on PostgreSQL).
    lay_out_tables("lead", "lead_scoring_rule", "case")
    # Foreign keys to and from the tables that exist already come after the layout: on
    # Citus both ends must be distributed (and colocated) first.
    for column, target in (("contact_id", "contact"), ("account_id", "account")):
        op.create_foreign_key(
            op.f(f"fk_case_{target}"), "case", target, ["tenant_id", column], ["tenant_id", "id"]
        )
    for kind in ("lead", "case"):
        op.create_foreign_key(
            op.f(f"fk_activity_{kind}"),
            "activity",
            kind,
            ["tenant_id", f"{kind}_id"],
            ["tenant_id", "id"],
            ondelete="CASCADE",
        )
        op.create_index(
            f"ix_activity_{kind}", "activity", ["tenant_id", f"{kind}_id", "occurred_at", "id"]
        )
    for table in ("lead", "lead_scoring_rule", "case"):
        name = _ident(table)
        op.execute(f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {name} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {name} USING ({TENANT}) WITH CHECK ({TENANT})"
        )
        op.execute(f"GRANT SELECT, INSERT, DELETE ON {name} TO {app}")
    op.execute(
        "GRANT UPDATE (first_name, last_name, company, title, email_enc, email_bidx, "
        "phone_enc, phone_bidx, enc_version, source, status, owner_id, score, "
        "score_details, converted_at, converted_account_id, converted_contact_id, "
        f"converted_opportunity_id, updated_at, version) ON lead TO {app}"
    )
    op.execute(
        "GRANT UPDATE (name, points, condition, active, updated_at, version) "
        f"ON lead_scoring_rule TO {app}"
    )
    op.execute(
        "GRANT UPDATE (subject, description, status, priority, origin, contact_id, "
        "account_id, owner_id, due_at, resolution, resolved_at, closed_at, updated_at, "
        f'version) ON "case" TO {app}'
    )


def downgrade() -> None:
    op.execute("DELETE FROM record_share WHERE record_kind IN ('lead', 'case')")
    op.drop_constraint(op.f("ck_record_share_record_kind"), "record_share", type_="check")
    op.create_check_constraint(
        op.f("ck_record_share_record_kind"),
        "record_share",
        f"record_kind IN ({SHARE_KINDS_BEFORE})",
    )
    op.drop_constraint(op.f("ck_activity_linked"), "activity", type_="check")
    op.execute("DELETE FROM activity WHERE lead_id IS NOT NULL OR case_id IS NOT NULL")
    op.create_check_constraint(
        op.f("ck_activity_linked"),
        "activity",
        "contact_id IS NOT NULL OR account_id IS NOT NULL OR opportunity_id IS NOT NULL",
    )
    for kind in ("lead", "case"):
        op.drop_index(f"ix_activity_{kind}", table_name="activity")
        op.drop_constraint(op.f(f"fk_activity_{kind}"), "activity", type_="foreignkey")
        op.drop_column("activity", f"{kind}_id")
    op.drop_table("case")
    op.drop_table("lead_scoring_rule")
    op.drop_table("lead")
