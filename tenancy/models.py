"""Control-plane tables for tenants and the tenant → shard directory."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tenancy.context import TenantStatus
from tenancy.planes import ControlBase

TENANT_STATUSES = tuple(s.value for s in TenantStatus)


class Tenant(ControlBase):
    __tablename__ = "tenant"
    __table_args__ = (
        CheckConstraint(
            "status IN ('provisioning', 'active', 'suspended', 'deleted')", name="status"
        ),
        CheckConstraint("slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'", name="slug_format"),
        CheckConstraint(
            "event_retention_days IS NULL OR event_retention_days BETWEEN 1 AND 3650",
            name="event_retention_days",
        ),
        CheckConstraint("jsonb_typeof(limits) = 'object'", name="limits"),
    )

    id: Mapped[UUID] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(Text)
    region: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    plan: Mapped[str] = mapped_column(String(32), server_default="standard")
    # The tenant's own limits, overriding its plan's, by name (meridian.settings.
    # PlanLimits: tenant_per_minute, caller_per_minute, calls_per_day,
    # records_per_object, stored_bytes); absent: the plan's.
    limits: Mapped[dict[str, int]] = mapped_column(JSONB, server_default="{}")
    # The Idempotency-Key and request digest of the onboarding call: a retry with the
    # same key resumes or replays it instead of failing on the taken slug.
    creation_key: Mapped[str | None] = mapped_column(String(255))
    creation_fingerprint: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Days the tenant's events (and so its history and audit trail) are kept; None: the
    # platform's default (MERIDIAN_EVENT_RETENTION_DAYS).
    event_retention_days: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DirectoryEntry(ControlBase):
    """Which shard holds a tenant; ``epoch`` grows by one on every move."""

    __tablename__ = "tenant_directory"

    tenant_id: Mapped[UUID] = mapped_column(
        ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True
    )
    shard_id: Mapped[str] = mapped_column(ForeignKey("shard.id"), index=True)
    epoch: Mapped[int] = mapped_column(Integer, server_default="1")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TenantKey(ControlBase):
    """A tenant's data key, version by version, wrapped by a KEK.

    Backups of this table must be kept for a shorter time than backups of the shards:
    crypto-shredding erases ``wrapped_key``, and a restored copy would bring it back.
    """

    __tablename__ = "tenant_key"
    __table_args__ = (
        CheckConstraint("state IN ('active', 'decrypt_only', 'destroyed')", name="state"),
        # At most one active version per tenant.
        Index(
            "uq_tenant_key_active",
            "tenant_id",
            unique=True,
            postgresql_where=text("state = 'active'"),
        ),
    )

    tenant_id: Mapped[UUID] = mapped_column(
        ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    kek_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    rewrapped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    destroyed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
