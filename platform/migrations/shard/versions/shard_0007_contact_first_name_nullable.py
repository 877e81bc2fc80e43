"""contact first name nullable

An omitted first name is absent (NULL, shown as null), not an empty string. Existing
empty first names become NULL; the table's RLS is forced for its owner too, so it is
relaxed for the owner inside this transaction only (nobody else sees the gap: the ALTER
holds the table's exclusive lock until the commit).

Revision ID: shard_0007
Revises: shard_0006
"""

from __future__ import annotations

from alembic import op

revision = "shard_0007"
down_revision = "shard_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE contact ALTER COLUMN first_name DROP NOT NULL")
    op.execute("ALTER TABLE contact ALTER COLUMN first_name DROP DEFAULT")
    # Citus: DML after DDL on a distributed table in one transaction must not go
    # parallel; every migration transaction starts sequential there (sharding.engine).
    op.execute("ALTER TABLE contact NO FORCE ROW LEVEL SECURITY")
    op.execute("UPDATE contact SET first_name = NULL WHERE first_name = ''")
    op.execute("ALTER TABLE contact FORCE ROW LEVEL SECURITY")


def downgrade() -> None:
    op.execute("ALTER TABLE contact NO FORCE ROW LEVEL SECURITY")
    op.execute("UPDATE contact SET first_name = '' WHERE first_name IS NULL")
    op.execute("ALTER TABLE contact FORCE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE contact ALTER COLUMN first_name SET DEFAULT ''")
    op.execute("ALTER TABLE contact ALTER COLUMN first_name SET NOT NULL")
