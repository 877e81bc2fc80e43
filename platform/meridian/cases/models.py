"""Support cases: a customer's problem, who works on it, by when, and how it ended."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import CheckConstraint, DateTime, ForeignKeyConstraint, Index, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from meridian.crud.model import Record, RecordRow, external_id_index, one_of
from tenancy.planes import ShardBase

CASE_STATUSES = ("new", "open", "pending", "on_hold", "resolved", "closed")
# A case in one of these is done: its resolution is recorded and its due time no
# longer counts.
CLOSED_STATUSES = ("resolved", "closed")
CASE_PRIORITIES = ("low", "normal", "high", "urgent")
CASE_ORIGINS = ("email", "phone", "web", "chat", "other")


class Case(Record, ShardBase):
    # "case" is an SQL keyword: SQLAlchemy quotes it, raw SQL must too.
    __tablename__ = "case"
    __table_args__ = (
        CheckConstraint(one_of("status", CASE_STATUSES), name="status"),
        CheckConstraint(one_of("priority", CASE_PRIORITIES), name="priority"),
        CheckConstraint(one_of("origin", CASE_ORIGINS), name="origin"),
        # Deleting a contact or an account that has cases is refused (409), as it is
        # while opportunities refer to it: a case is a record of service, not a detail.
        ForeignKeyConstraint(
            ["tenant_id", "contact_id"], ["contact.tenant_id", "contact.id"], name="fk_case_contact"
        ),
        ForeignKeyConstraint(
            ["tenant_id", "account_id"], ["account.tenant_id", "account.id"], name="fk_case_account"
        ),
        Index("ix_case_contact_id", "tenant_id", "contact_id", "id"),
        Index("ix_case_account_id", "tenant_id", "account_id", "id"),
        Index("ix_case_owner_id", "tenant_id", "owner_id", "id"),
        Index("ix_case_status", "tenant_id", "status", "id"),
        Index("ix_case_priority", "tenant_id", "priority", "id"),
        Index("ix_case_due_at", "tenant_id", "due_at", "id"),
        Index("ix_case_created_at", "tenant_id", "created_at", "id"),
        Index("ix_case_updated_at", "tenant_id", "updated_at", "id"),
        external_id_index("case"),
    )

    subject: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), server_default="new")
    priority: Mapped[str] = mapped_column(String(8), server_default="normal")
    origin: Mapped[str | None] = mapped_column(String(8))
    contact_id: Mapped[UUID | None]
    account_id: Mapped[UUID | None]
    owner_id: Mapped[UUID | None]
    # The service-level deadline: given, or derived from the priority on creation.
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    resolution: Mapped[str | None] = mapped_column(Text)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Its id in the client's own system (batch upserts find it by that).
    external_id: Mapped[str | None] = mapped_column(String(255))
    # The tenant's own fields (meridian.crud.custom), by name.
    custom: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")


class CaseRow(RecordRow):
    subject: str
    description: str | None
    status: str
    priority: str
    origin: str | None
    contact_id: UUID | None
    account_id: UUID | None
    owner_id: UUID | None
    due_at: datetime
    resolution: str | None
    resolved_at: datetime | None
    closed_at: datetime | None
    external_id: str | None
    custom: dict[str, Any]
