"""custom fields: a tenant's own fields on accounts, contacts, leads, opportunities and
cases, as data (no per-tenant DDL, so every tenant's tables stay the same on Citus)

- ``field_definition``: the tenant's fields per object (name, type, options, required,
  default, unique; archived ones keep their values until purged);
- a ``custom`` JSONB column on each of the five tables: the record's values by field
  name, returned with it;
- ``custom_value``: the same values typed, one row per (field, record, item), indexed per
  field for filters, sorts and uniqueness (``unique_value`` is set for unique fields only).

Revision ID: shard_0014
Revises: shard_0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from meridian.migrate import lay_out_tables

revision = "shard_0014"
down_revision = "shard_0013"
branch_labels = None
depends_on = None

TENANT = "tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid"
OBJECTS = ("account", "contact", "lead", "opportunity", "case")
FIELD_TYPES = (
    "'text', 'number', 'decimal', 'date', 'datetime', 'boolean', 'picklist', "
    "'multi_picklist', 'currency', 'email', 'url', 'lookup'"
)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _timestamp(name: str) -> sa.Column[object]:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    app = _ident(op.get_context().config.attributes["app_role"])
    op.create_table(
        "field_definition",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("object", sa.String(16), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("label", sa.String(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("required", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("is_unique", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("default", JSONB(), nullable=True),
        sa.Column("options", JSONB(), server_default="{}", nullable=False),
        sa.Column("position", sa.Integer(), server_default="0", nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.CheckConstraint(
            "object IN ('account', 'contact', 'lead', 'opportunity', 'case')",
            name=op.f("ck_field_definition_object"),
        ),
        sa.CheckConstraint(f"type IN ({FIELD_TYPES})", name=op.f("ck_field_definition_type")),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_field_definition")),
    )
    # A name is the field's for good: archived fields keep theirs (they can come back).
    op.create_index(
        "uq_field_definition_name",
        "field_definition",
        ["tenant_id", "object", "name"],
        unique=True,
    )
    op.create_index(
        "ix_field_definition_created_at", "field_definition", ["tenant_id", "created_at", "id"]
    )
    op.create_table(
        "custom_value",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("field_id", sa.Uuid(), nullable=False),
        sa.Column("record_id", sa.Uuid(), nullable=False),
        sa.Column("item", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("text_value", sa.Text(), nullable=True),
        # double precision: its comparisons are leakproof, so under row-level security
        # they can be index conditions (numeric's are not, and would only filter).
        sa.Column("number_value", sa.Double(), nullable=True),
        sa.Column("date_value", sa.Date(), nullable=True),
        sa.Column("time_value", sa.DateTime(timezone=True), nullable=True),
        sa.Column("bool_value", sa.Boolean(), nullable=True),
        sa.Column("ref_value", sa.Uuid(), nullable=True),
        sa.Column("unique_value", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint(
            "tenant_id", "field_id", "record_id", "item", name=op.f("pk_custom_value")
        ),
    )
    # Partial: a row holds one typed value, so each index holds only its type's rows.
    for column in ("text_value", "number_value", "date_value", "time_value", "ref_value"):
        op.create_index(
            f"ix_custom_value_{column}",
            "custom_value",
            ["tenant_id", "field_id", column, "record_id"],
            postgresql_where=sa.text(f"{column} IS NOT NULL"),
        )
    op.create_index("ix_custom_value_record", "custom_value", ["tenant_id", "record_id"])
    op.create_index(
        "uq_custom_value_unique",
        "custom_value",
        ["tenant_id", "field_id", "unique_value"],
        unique=True,
        postgresql_where=sa.text("unique_value IS NOT NULL"),
    )
    for table in OBJECTS:
        op.add_column(table, sa.Column("custom", JSONB(), server_default="{}", nullable=False))
        op.execute(f"GRANT UPDATE (custom) ON {_ident(table)} TO {app}")
    lay_out_tables("field_definition", "custom_value")
    for table in ("field_definition", "custom_value"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} USING ({TENANT}) WITH CHECK ({TENANT})"
        )
        op.execute(f"GRANT SELECT, INSERT, DELETE ON {table} TO {app}")
    op.execute(
        'GRANT UPDATE (label, description, required, is_unique, "default", options, '
        f"position, archived_at, updated_at, version) ON field_definition TO {app}"
    )
    op.execute(f"GRANT UPDATE (unique_value) ON custom_value TO {app}")


def downgrade() -> None:
    for table in OBJECTS:
        op.drop_column(table, "custom")
    op.drop_table("custom_value")
    op.drop_table("field_definition")
