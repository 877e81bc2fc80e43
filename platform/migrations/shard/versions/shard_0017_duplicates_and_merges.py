"""duplicates and merges: a tenant's duplicate rules, merges and what undoing one needs

- ``duplicate_rule``: how two accounts, contacts or leads match (conditions as JSONB:
  exact on a field, through its blind index for a sealed one, or similar above a
  threshold), data rather than DDL, unique by (kind, name) in the tenant;
- ``merge_record``: one merge (kind, survivor, merged ids, who, state) and, until it is
  undone or 30 days have passed, its snapshot (the merged rows and their custom values
  as stored, ciphertext as ciphertext; the survivor as it was; every reference moved);
- expression indexes ``(tenant_id, <match key>)`` on account names, contact and lead
  last names and lead companies: the candidates of a similarity rule are the records
  whose key (the first three letters or digits of the value, lower-cased) is the
  record's (``meridian.merges.matching.match_key``; pg_trgm is not used: the embedded
  PostgreSQL of ``meridian dev`` has no contrib modules);
- the app role may move references to a survivor and back: ``UPDATE`` of an activity's
  links (its content stays immutable), of a share's ``record_id`` and of a custom
  value's ``ref_value``.

Revision ID: shard_0017
Revises: shard_0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from meridian.migrate import lay_out_tables

revision = "shard_0017"
down_revision = "shard_0016"
branch_labels = None
depends_on = None

TENANT = "tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid"
KINDS = "'account', 'contact', 'lead'"
STATES = "'merged', 'undone', 'expired'"
# (index, table, column): the candidates of a similarity rule. The expression is the one
# meridian.merges.matching.match_key builds, constants included, so the planner matches it.
MATCH_KEYS = (
    ("ix_account_match_name", "account", "name"),
    ("ix_contact_match_last_name", "contact", "last_name"),
    ("ix_lead_match_last_name", "lead", "last_name"),
    ("ix_lead_match_company", "lead", "company"),
)
ACTIVITY_LINKS = "contact_id, account_id, opportunity_id, lead_id, case_id"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _key(column: str) -> str:
    return f"left(lower(regexp_replace({column}, '[^[:alnum:]]+', '', 'g')), 3)"


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


def upgrade() -> None:
    app = _ident(op.get_context().config.attributes["app_role"])
    op.create_table(
        "duplicate_rule",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("conditions", JSONB(), nullable=False),
        sa.Column("active", sa.Boolean(), server_default="true", nullable=False),
        *_record_columns(),
        sa.CheckConstraint(f"kind IN ({KINDS})", name=op.f("ck_duplicate_rule_kind")),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_duplicate_rule")),
    )
    op.create_index(
        "uq_duplicate_rule_name", "duplicate_rule", ["tenant_id", "kind", "name"], unique=True
    )
    op.create_index(
        "ix_duplicate_rule_created_at", "duplicate_rule", ["tenant_id", "created_at", "id"]
    )
    op.create_table(
        "merge_record",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("survivor_id", sa.Uuid(), nullable=False),
        sa.Column("merged_ids", JSONB(), nullable=False),
        sa.Column("state", sa.String(16), server_default="merged", nullable=False),
        sa.Column("actor_type", sa.String(16), nullable=False),
        sa.Column("actor_id", sa.String(255), nullable=True),
        sa.Column("survivor_version", sa.Integer(), nullable=False),
        sa.Column("reparented", JSONB(), server_default="{}", nullable=False),
        sa.Column("snapshot", JSONB(), nullable=True),
        sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("undone_by_type", sa.String(16), nullable=True),
        sa.Column("undone_by_id", sa.String(255), nullable=True),
        sa.Column("skipped", JSONB(), nullable=True),
        *_record_columns(),
        sa.CheckConstraint(f"kind IN ({KINDS})", name=op.f("ck_merge_record_kind")),
        sa.CheckConstraint(f"state IN ({STATES})", name=op.f("ck_merge_record_state")),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_merge_record")),
    )
    op.create_index("ix_merge_record_created_at", "merge_record", ["tenant_id", "created_at", "id"])
    op.create_index("ix_merge_record_survivor_id", "merge_record", ["tenant_id", "survivor_id"])
    op.create_index("ix_merge_record_state", "merge_record", ["tenant_id", "state", "created_at"])
    # Citus: distributed on tenant_id, colocated with the others (a no-op on PostgreSQL).
    lay_out_tables("duplicate_rule", "merge_record")
    for table in ("duplicate_rule", "merge_record"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} USING ({TENANT}) WITH CHECK ({TENANT})"
        )
        op.execute(f"GRANT SELECT, INSERT, DELETE ON {table} TO {app}")
    op.execute(
        f"GRANT UPDATE (name, conditions, active, updated_at, version) ON duplicate_rule TO {app}"
    )
    op.execute(
        "GRANT UPDATE (state, snapshot, undone_at, undone_by_type, undone_by_id, skipped, "
        f"updated_at, version) ON merge_record TO {app}"
    )
    for name, table, column in MATCH_KEYS:
        op.execute(f"CREATE INDEX {name} ON {_ident(table)} (tenant_id, ({_key(column)}))")
    # Merges move references to the survivor (and an undo moves them back).
    op.execute(f"GRANT UPDATE ({ACTIVITY_LINKS}) ON activity TO {app}")
    op.execute(f"GRANT UPDATE (record_id) ON record_share TO {app}")
    op.execute(f"GRANT UPDATE (ref_value) ON custom_value TO {app}")


def downgrade() -> None:
    app = _ident(op.get_context().config.attributes["app_role"])
    op.execute(f"REVOKE UPDATE (ref_value) ON custom_value FROM {app}")
    op.execute(f"REVOKE UPDATE (record_id) ON record_share FROM {app}")
    op.execute(f"REVOKE UPDATE ({ACTIVITY_LINKS}) ON activity FROM {app}")
    for name, table, _ in MATCH_KEYS:
        op.drop_index(name, table_name=table)
    op.drop_table("merge_record")
    op.drop_table("duplicate_rule")
