"""A tenant's duplicate rules, and the merges made (with what undoing one needs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Boolean, CheckConstraint, DateTime, Index, Integer, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from meridian.crud.model import Record, RecordRow, one_of
from tenancy.planes import ShardBase

# The kinds a rule or a merge is about (their tables).
MERGE_KINDS = ("account", "contact", "lead")
MERGE_STATES = ("merged", "undone", "expired")


class DuplicateRule(Record, ShardBase):
    """How two records of ``kind`` match: every condition holds (exact on a field,
    through its blind index for a sealed one, or similar above a threshold)."""

    __tablename__ = "duplicate_rule"
    __table_args__ = (
        CheckConstraint(one_of("kind", MERGE_KINDS), name="kind"),
        Index("uq_duplicate_rule_name", "tenant_id", "kind", "name", unique=True),
        Index("ix_duplicate_rule_created_at", "tenant_id", "created_at", "id"),
    )

    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100))
    conditions: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    active: Mapped[bool] = mapped_column(Boolean, server_default="true")


class DuplicateRuleRow(RecordRow):
    kind: str
    name: str
    conditions: list[dict[str, Any]]
    active: bool


class MergeRecord(Record, ShardBase):
    """One merge: who, when, the survivor and the records merged into it, and until it
    is undone or expires (30 days), the snapshot that undoes it — the merged rows and
    their custom values as stored (ciphertext stays ciphertext), the survivor as it was,
    and every reference moved to the survivor."""

    __tablename__ = "merge_record"
    __table_args__ = (
        CheckConstraint(one_of("kind", MERGE_KINDS), name="kind"),
        CheckConstraint(one_of("state", MERGE_STATES), name="state"),
        Index("ix_merge_record_created_at", "tenant_id", "created_at", "id"),
        Index("ix_merge_record_survivor_id", "tenant_id", "survivor_id"),
        # The retention job's scan: snapshots still kept, oldest first.
        Index("ix_merge_record_state", "tenant_id", "state", "created_at"),
    )

    kind: Mapped[str] = mapped_column(String(16))
    survivor_id: Mapped[UUID]
    merged_ids: Mapped[list[Any]] = mapped_column(JSONB)
    state: Mapped[str] = mapped_column(String(16), server_default="merged")
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str | None] = mapped_column(String(255))
    # The survivor's version right after the merge: a later change makes undo unsafe.
    survivor_version: Mapped[int] = mapped_column(Integer)
    # How many references moved, per "<table>.<column>".
    reparented: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    undone_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    undone_by_type: Mapped[str | None] = mapped_column(String(16))
    undone_by_id: Mapped[str | None] = mapped_column(String(255))
    # The references an undo left where they were (deleted or changed since), and why.
    skipped: Mapped[list[Any] | None] = mapped_column(JSONB)


class MergeRecordRow(RecordRow):
    kind: str
    survivor_id: UUID
    merged_ids: list[Any]
    state: str
    actor_type: str
    actor_id: str | None
    survivor_version: int
    reparented: dict[str, Any]
    undone_at: datetime | None
    undone_by_type: str | None
    undone_by_id: str | None
    skipped: list[Any] | None
