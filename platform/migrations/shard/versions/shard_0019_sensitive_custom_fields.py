"""sensitive custom fields: a custom field whose values are encrypted

- ``field_definition.sensitive`` (boolean, false by default): the field's values are
  sealed with the tenant's data key, as the built-in personal fields are; it never
  changes after the field is made (the stored values depend on it).
- ``custom_value.sealed_value`` (text): the value's ciphertext, base64, kept for an
  archived field's restoration (the record's ``custom`` holds the same ciphertext);
- ``custom_value.bidx`` (bytea): the value's blind index, which equality filters and
  uniqueness compare; indexed per field like the typed values (``tenant_id`` first);
- ``custom_value.key_version`` (smallint): the data-key version of both, which the
  re-encryption job walks and key retirement checks.

The app role may update the three (a rotation re-seals values in place).

Revision ID: shard_0019
Revises: shard_0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "shard_0019"
down_revision = "shard_0018"
branch_labels = None
depends_on = None


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def upgrade() -> None:
    app = _ident(op.get_context().config.attributes["app_role"])
    op.add_column(
        "field_definition",
        sa.Column("sensitive", sa.Boolean(), server_default="false", nullable=False),
    )
    op.add_column("custom_value", sa.Column("sealed_value", sa.Text(), nullable=True))
    op.add_column("custom_value", sa.Column("bidx", sa.LargeBinary(), nullable=True))
    op.add_column("custom_value", sa.Column("key_version", sa.SmallInteger(), nullable=True))
    op.create_index(
        "ix_custom_value_bidx",
        "custom_value",
        ["tenant_id", "field_id", "bidx", "record_id"],
        postgresql_where=sa.text("bidx IS NOT NULL"),
    )
    # The re-encryption job's walk: a tenant's sealed values still on an old version.
    op.create_index(
        "ix_custom_value_key_version",
        "custom_value",
        ["tenant_id", "key_version", "record_id"],
        postgresql_where=sa.text("key_version IS NOT NULL"),
    )
    op.execute(f"GRANT UPDATE (sealed_value, bidx, key_version) ON custom_value TO {app}")


def downgrade() -> None:
    op.drop_index("ix_custom_value_key_version", table_name="custom_value")
    op.drop_index("ix_custom_value_bidx", table_name="custom_value")
    # Dropping the columns drops the app role's column privileges with them.
    op.drop_column("custom_value", "key_version")
    op.drop_column("custom_value", "bidx")
    op.drop_column("custom_value", "sealed_value")
    op.drop_column("field_definition", "sensitive")
