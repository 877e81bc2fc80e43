"""imports and exports: the tenant's files and its export and import jobs

- ``data_file``: a file of the tenant (an export's result, an import's upload, an
  import's error report), its size, the data-key version its chunks are sealed with and
  when the worker's retention deletes it;
- ``data_file_chunk``: the file's bytes, up to 1 MiB of it per row, compressed and
  sealed (``meridian.transfers.files``), deleted with their file;
- ``data_export`` and ``data_import``: the jobs, their options, state and progress (an
  import's is committed with each chunk of rows, which is what makes it resumable);
- ``transfer_unfinished``: the jobs not yet at an end, ids only. The worker's recovery
  job reads it across the shard's tenants with ``SET LOCAL app.transfer_sweep = 'on'``,
  which its policy honours as ``fulfilment_unfinished``'s honours
  ``app.fulfilment_sweep``; every other table keeps the tenant policy alone.

Files are on the tenant's shard, so they stay in its region, move with it (the mover
copies every table with a ``tenant_id``) and go with it.

Revision ID: shard_0018
Revises: shard_0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from meridian.migrate import lay_out_tables

revision = "shard_0018"
down_revision = "shard_0017"
branch_labels = None
depends_on = None

TENANT = "tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid"
SWEEP = f"({TENANT}) OR current_setting('app.transfer_sweep', true) = 'on'"
TABLES = ("data_file", "data_file_chunk", "data_export", "data_import", "transfer_unfinished")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[object]:
    if nullable:
        return sa.Column(name, sa.DateTime(timezone=True), nullable=True)
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def _job_columns() -> list[sa.Column[object]]:
    """Who asked, what went wrong, and when: both kinds of job have them."""
    return [
        sa.Column("requested_by_type", sa.String(8), nullable=False),
        sa.Column("requested_by_id", sa.String(255), nullable=False),
        sa.Column("requested_by_role", sa.String(63), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _timestamp("started_at", nullable=True),
        _timestamp("finished_at", nullable=True),
    ]


def upgrade() -> None:
    app = '"' + op.get_context().config.attributes["app_role"].replace('"', '""') + '"'
    op.create_table(
        "data_file",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("purpose", sa.String(8), nullable=False),
        sa.Column("media_type", sa.String(64), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("chunks", sa.Integer(), server_default="0", nullable=False),
        sa.Column("raw_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("complete", sa.Boolean(), server_default="false", nullable=False),
        _timestamp("created_at"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            _one_of("purpose", ("export", "upload", "report")), name=op.f("ck_data_file_purpose")
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_data_file")),
    )
    op.create_index("ix_data_file_expires_at", "data_file", ["tenant_id", "expires_at"])
    op.create_table(
        "data_file_chunk",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("file_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("raw_offset", sa.BigInteger(), nullable=False),
        sa.Column("raw_size", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "file_id", "seq", name=op.f("pk_data_file_chunk")),
    )
    op.create_table(
        "data_export",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("object", sa.String(16), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("filter_enc", sa.LargeBinary(), nullable=True),
        sa.Column("sort", sa.String(80), nullable=True),
        sa.Column("fields", JSONB(), nullable=True),
        sa.Column("columns", JSONB(), nullable=True),
        sa.Column("state", sa.String(16), server_default="queued", nullable=False),
        sa.Column("rows_written", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("bytes_written", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("file_id", sa.Uuid(), nullable=True),
        sa.Column("resume_at", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        *_job_columns(),
        sa.CheckConstraint(
            _one_of("state", ("queued", "running", "done", "failed")),
            name=op.f("ck_data_export_state"),
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_data_export")),
    )
    op.create_index("ix_data_export_created_at", "data_export", ["tenant_id", "created_at", "id"])
    op.create_table(
        "data_import",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("object", sa.String(16), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("options", JSONB(), nullable=False),
        sa.Column("state", sa.String(16), server_default="queued", nullable=False),
        sa.Column("upload_file_id", sa.Uuid(), nullable=False),
        sa.Column("report_file_id", sa.Uuid(), nullable=True),
        sa.Column("bytes_total", sa.BigInteger(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("next_line", sa.BigInteger(), server_default="1", nullable=False),
        *(
            sa.Column(name, sa.BigInteger(), server_default="0", nullable=False)
            for name in ("rows_done", "created", "updated", "skipped", "failed")
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        *_job_columns(),
        sa.CheckConstraint(
            _one_of("state", ("queued", "running", "done", "failed", "cancelled")),
            name=op.f("ck_data_import_state"),
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_data_import")),
    )
    op.create_index("ix_data_import_created_at", "data_import", ["tenant_id", "created_at", "id"])
    op.create_table(
        "transfer_unfinished",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        _timestamp("heartbeat_at"),
        sa.CheckConstraint(
            _one_of("kind", ("export", "import")), name=op.f("ck_transfer_unfinished_kind")
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_transfer_unfinished")),
    )
    # Citus: distributed on tenant_id, colocated with the others (a no-op on PostgreSQL).
    lay_out_tables(*TABLES)
    # After the layout: on Citus both ends of a foreign key must be distributed first.
    op.create_foreign_key(
        "fk_data_file_chunk_file",
        "data_file_chunk",
        "data_file",
        ["tenant_id", "file_id"],
        ["tenant_id", "id"],
        ondelete="CASCADE",
    )
    for table in TABLES:
        policy = SWEEP if table == "transfer_unfinished" else TENANT
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} USING ({policy}) WITH CHECK ({TENANT})"
        )
    # Files are written once (their chunks never change) and deleted whole.
    op.execute(f"GRANT SELECT, INSERT, DELETE ON data_file, data_file_chunk TO {app}")
    op.execute(
        "GRANT UPDATE (chunks, raw_bytes, stored_bytes, complete, expires_at) "
        f"ON data_file TO {app}"
    )
    # Jobs are kept (their history); their options never change, their progress does.
    op.execute(f"GRANT SELECT, INSERT ON data_export, data_import TO {app}")
    op.execute(
        "GRANT UPDATE (columns, state, rows_written, bytes_written, file_id, resume_at, "
        "expires_at, error, attempts, updated_at, started_at, finished_at) "
        f"ON data_export TO {app}"
    )
    op.execute(
        "GRANT UPDATE (state, report_file_id, next_offset, next_line, rows_done, created, "
        "updated, skipped, failed, expires_at, error, attempts, updated_at, started_at, "
        "finished_at) "
        f"ON data_import TO {app}"
    )
    op.execute(f"GRANT SELECT, INSERT, DELETE ON transfer_unfinished TO {app}")
    op.execute(f"GRANT UPDATE (heartbeat_at) ON transfer_unfinished TO {app}")


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
