"""Leads (prospects not yet qualified) and the tenant's lead scoring rules."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args
from uuid import UUID

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from meridian.crud.model import Record, RecordRow, external_id_index, one_of
from tenancy.planes import ShardBase

LEAD_STATUSES = ("new", "working", "nurturing", "qualified", "unqualified", "converted")
LeadSource = Literal[
    "web", "referral", "event", "partner", "advertising", "cold_call", "social", "other"
]
LEAD_SOURCES: tuple[str, ...] = get_args(LeadSource)


class Lead(Record, ShardBase):
    __tablename__ = "lead"
    __table_args__ = (
        CheckConstraint(one_of("status", LEAD_STATUSES), name="status"),
        CheckConstraint(one_of("source", LEAD_SOURCES), name="source"),
        # A converted lead says what it became; no other lead does.
        CheckConstraint("(status = 'converted') = (converted_at IS NOT NULL)", name="converted"),
        CheckConstraint(
            "enc_version IS NOT NULL OR (email_enc IS NULL AND phone_enc IS NULL)",
            name="enc_version",
        ),
        Index("ix_lead_last_name", "tenant_id", "last_name", "id"),
        Index("ix_lead_company", "tenant_id", "company", "id"),
        Index("ix_lead_owner_id", "tenant_id", "owner_id", "id"),
        Index("ix_lead_status", "tenant_id", "status", "id"),
        Index("ix_lead_score", "tenant_id", "score", "id"),
        Index("ix_lead_created_at", "tenant_id", "created_at", "id"),
        Index("ix_lead_updated_at", "tenant_id", "updated_at", "id"),
        Index("ix_lead_enc_version", "tenant_id", "enc_version", "id"),
        Index("ix_lead_email_bidx", "tenant_id", "email_bidx"),
        Index("ix_lead_phone_bidx", "tenant_id", "phone_bidx"),
        external_id_index("lead"),
    )

    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    company: Mapped[str | None] = mapped_column(String(255))
    title: Mapped[str | None] = mapped_column(String(200))
    # Sealed like a contact's (meridian.encryption.fields.SENSITIVE).
    email_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    email_bidx: Mapped[bytes | None] = mapped_column(LargeBinary)
    phone_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    phone_bidx: Mapped[bytes | None] = mapped_column(LargeBinary)
    enc_version: Mapped[int | None] = mapped_column(Integer)
    source: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), server_default="new")
    owner_id: Mapped[UUID | None]
    # Kept by meridian.leads.scoring: the sum of the matching rules' points, and which.
    score: Mapped[int] = mapped_column(Integer, server_default="0")
    score_details: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    # What the lead became (ids only: those records live on, and may go, on their own).
    converted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    converted_account_id: Mapped[UUID | None]
    converted_contact_id: Mapped[UUID | None]
    converted_opportunity_id: Mapped[UUID | None]
    # Its id in the client's own system (batch upserts find it by that).
    external_id: Mapped[str | None] = mapped_column(String(255))
    # The tenant's own fields (meridian.crud.custom), by name.
    custom: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")


class LeadRow(RecordRow):
    """A lead as its repository reads it (email and phone still sealed)."""

    first_name: str | None
    last_name: str
    company: str | None
    title: str | None
    email_enc: bytes | None
    phone_enc: bytes | None
    source: str | None
    status: str
    owner_id: UUID | None
    score: int
    score_details: list[dict[str, Any]]
    converted_at: datetime | None
    converted_account_id: UUID | None
    converted_contact_id: UUID | None
    converted_opportunity_id: UUID | None
    external_id: str | None
    custom: dict[str, Any]


class LeadScoringRule(Record, ShardBase):
    """Points a lead earns while ``condition`` holds (see meridian.leads.scoring)."""

    __tablename__ = "lead_scoring_rule"
    __table_args__ = (
        CheckConstraint("points BETWEEN -1000 AND 1000", name="points"),
        Index("uq_lead_scoring_rule_name", "tenant_id", "name", unique=True),
        Index("ix_lead_scoring_rule_created_at", "tenant_id", "created_at", "id"),
    )

    name: Mapped[str] = mapped_column(String(100))
    points: Mapped[int] = mapped_column(Integer)
    condition: Mapped[dict[str, Any]] = mapped_column(JSONB)
    active: Mapped[bool] = mapped_column(Boolean, server_default="true")


class LeadScoringRuleRow(RecordRow):
    name: str
    points: int
    condition: dict[str, Any]
    active: bool
