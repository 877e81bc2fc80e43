from __future__ import annotations

from datetime import datetime
from typing import TypedDict
from uuid import UUID

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKeyConstraint,
    Index,
    String,
    Text,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from tenancy.planes import ShardBase, TenantScoped

ACTIVITY_TYPES = ("call", "email", "meeting", "note", "task")


class Activity(TenantScoped, ShardBase):
    """An interaction record: written once, never updated (no version, no updated_at).

    It goes with the record it is about: deleting a contact, account, opportunity, lead
    or case deletes its activities (ON DELETE CASCADE, a constraint rather than a
    trigger, so it also holds on Citus).
    """

    __tablename__ = "activity"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "contact_id"],
            ["contact.tenant_id", "contact.id"],
            name="fk_activity_contact",
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "account_id"],
            ["account.tenant_id", "account.id"],
            name="fk_activity_account",
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "opportunity_id"],
            ["opportunity.tenant_id", "opportunity.id"],
            name="fk_activity_opportunity",
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "lead_id"],
            ["lead.tenant_id", "lead.id"],
            name="fk_activity_lead",
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "case_id"],
            ["case.tenant_id", "case.id"],
            name="fk_activity_case",
            ondelete="CASCADE",
        ),
        CheckConstraint("type IN ('call', 'email', 'meeting', 'note', 'task')", name="type"),
        CheckConstraint(
            "contact_id IS NOT NULL OR account_id IS NOT NULL OR opportunity_id IS NOT NULL "
            "OR lead_id IS NOT NULL OR case_id IS NOT NULL",
            name="linked",
        ),
        Index("ix_activity_contact", "tenant_id", "contact_id", "occurred_at", "id"),
        Index("ix_activity_account", "tenant_id", "account_id", "occurred_at", "id"),
        Index("ix_activity_opportunity", "tenant_id", "opportunity_id", "occurred_at", "id"),
        Index("ix_activity_lead", "tenant_id", "lead_id", "occurred_at", "id"),
        Index("ix_activity_case", "tenant_id", "case_id", "occurred_at", "id"),
        Index("ix_activity_occurred", "tenant_id", "occurred_at", "id"),
        Index("ix_activity_owner", "tenant_id", "owner_id", "occurred_at", "id"),
        Index("ix_activity_created", "tenant_id", "created_at", "id"),
    )

    id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-10)
    type: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(255))
    body: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    contact_id: Mapped[UUID | None]
    account_id: Mapped[UUID | None]
    opportunity_id: Mapped[UUID | None]
    lead_id: Mapped[UUID | None]
    case_id: Mapped[UUID | None]
    owner_id: Mapped[UUID | None]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ActivityRow(TypedDict):
    """An activity as its repository reads it (immutable: no version)."""

    id: UUID
    type: str
    subject: str
    body: str | None
    occurred_at: datetime
    contact_id: UUID | None
    account_id: UUID | None
    opportunity_id: UUID | None
    lead_id: UUID | None
    case_id: UUID | None
    owner_id: UUID | None
    created_at: datetime
