"""Transfer tables of a shard: files (export results, import uploads, import error
reports) as sealed compressed chunks, and the export and import jobs.

Files live on the tenant's own shard, keyed by ``tenant_id`` like every other row: a
tenant's data never leaves its shard (its region), a move copies its files with its
records, and deleting the tenant's keys (crypto-shredding) makes them unreadable with
the rest. Each chunk is at most ``CHUNK_BYTES`` of the file, compressed, then sealed with
a key derived from the tenant's data key (``meridian.transfers.files``), so nothing of a
file is in clear on the shard. ``transfer_unfinished`` names the jobs not yet at an end
(ids only): the worker's recovery job reads it across the shard's tenants, as the
fulfilment sagas' recovery reads ``fulfilment_unfinished``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tenancy.planes import ShardBase, TenantScoped

FILE_PURPOSES = ("export", "upload", "report")
EXPORT_STATES = ("queued", "running", "done", "failed")
IMPORT_STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = frozenset({"done", "failed", "cancelled"})
KINDS = ("export", "import")


def one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class DataFile(TenantScoped, ShardBase):
    """A file of the tenant: its chunks are ``data_file_chunk`` rows, in ``seq`` order."""

    __tablename__ = "data_file"
    __table_args__ = (
        Index("ix_data_file_expires_at", "tenant_id", "expires_at"),
        CheckConstraint(one_of("purpose", FILE_PURPOSES), name="purpose"),
    )

    id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-10)
    purpose: Mapped[str] = mapped_column(String(8))
    media_type: Mapped[str] = mapped_column(String(64))
    # The tenant's data-key version its chunks are sealed with.
    key_version: Mapped[int] = mapped_column(Integer)
    chunks: Mapped[int] = mapped_column(Integer, server_default="0")
    # The file's size, and what its sealed chunks take on the shard.
    raw_bytes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    stored_bytes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    complete: Mapped[bool] = mapped_column(Boolean, server_default="false")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The worker's retention deletes it (and its chunks) after this.
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DataFileChunk(TenantScoped, ShardBase):
    __tablename__ = "data_file_chunk"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "file_id"],
            ["data_file.tenant_id", "data_file.id"],
            name="fk_data_file_chunk_file",
            ondelete="CASCADE",
        ),
    )

    file_id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-10)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, sort_order=-5)
    # Where the chunk's bytes sit in the file, and how many there are (uncompressed).
    raw_offset: Mapped[int] = mapped_column(BigInteger)
    raw_size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class _Job:
    """What an export and an import both keep: who asked (a user's id or a client's id,
    and the role a client acts with), the last error, the attempts, and when."""

    requested_by_type: Mapped[str] = mapped_column(String(8))
    requested_by_id: Mapped[str] = mapped_column(String(255))
    requested_by_role: Mapped[str | None] = mapped_column(String(63))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DataExport(_Job, TenantScoped, ShardBase):
    """An export job: a list (object, filter, sort) written to a file by the worker."""

    __tablename__ = "data_export"
    __table_args__ = (
        Index("ix_data_export_created_at", "tenant_id", "created_at", "id"),
        CheckConstraint(one_of("state", EXPORT_STATES), name="state"),
    )

    id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-10)
    object: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(8))
    # The list filter, sealed like a sensitive field (it may name an email).
    filter_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    sort: Mapped[str | None] = mapped_column(String(80))
    fields: Mapped[list[str] | None] = mapped_column(JSONB)
    # The CSV's columns, fixed when the worker starts (a resumed export keeps them).
    columns: Mapped[list[str] | None] = mapped_column(JSONB)
    state: Mapped[str] = mapped_column(String(16), server_default="queued")
    rows_written: Mapped[int] = mapped_column(BigInteger, server_default="0")
    bytes_written: Mapped[int] = mapped_column(BigInteger, server_default="0")
    file_id: Mapped[UUID | None]
    # Where the walk goes on (a cursor after the last row of the last chunk written).
    resume_at: Mapped[str | None] = mapped_column(Text)
    # When its file is deleted (set when it is done).
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DataImport(_Job, TenantScoped, ShardBase):
    """An import job: an uploaded file, written through the object's batch flow."""

    __tablename__ = "data_import"
    __table_args__ = (
        Index("ix_data_import_created_at", "tenant_id", "created_at", "id"),
        CheckConstraint(one_of("state", IMPORT_STATES), name="state"),
    )

    id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-10)
    object: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(8))
    # mapping, on_match, match_by, dry_run, allow_duplicate (schemas.ImportOptions).
    options: Mapped[dict[str, Any]] = mapped_column(JSONB)
    state: Mapped[str] = mapped_column(String(16), server_default="queued")
    upload_file_id: Mapped[UUID]
    report_file_id: Mapped[UUID | None]
    bytes_total: Mapped[int] = mapped_column(BigInteger)
    # The progress, committed with each chunk: where the next chunk starts in the file
    # (byte offset, line), and what the rows before it became.
    next_offset: Mapped[int] = mapped_column(BigInteger, server_default="0")
    next_line: Mapped[int] = mapped_column(BigInteger, server_default="1")
    rows_done: Mapped[int] = mapped_column(BigInteger, server_default="0")
    created: Mapped[int] = mapped_column(BigInteger, server_default="0")
    updated: Mapped[int] = mapped_column(BigInteger, server_default="0")
    skipped: Mapped[int] = mapped_column(BigInteger, server_default="0")
    failed: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # When its error report is deleted (set when it ends).
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TransferUnfinished(TenantScoped, ShardBase):
    """A job not yet at an end (deleted when it ends), with the time its worker last
    reported progress: the recovery job's worklist."""

    __tablename__ = "transfer_unfinished"
    __table_args__ = (CheckConstraint(one_of("kind", KINDS), name="kind"),)

    id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-10)
    kind: Mapped[str] = mapped_column(String(8))
    heartbeat_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
