"""Shard topology (control plane) and tenant residency (on every shard)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, DateTime, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from tenancy.planes import ControlBase, ShardBase, TenantScoped


class ShardState(enum.StrEnum):
    ACTIVE = "active"  # accepts new tenants
    CLOSED = "closed"  # serves its tenants, takes no new ones (full, or being drained)
    OFFLINE = "offline"  # taken out of service by an admin


class Shard(ControlBase):
    __tablename__ = "shard"
    __table_args__ = (
        CheckConstraint("state IN ('active', 'closed', 'offline')", name="state"),
        CheckConstraint("capacity > 0", name="capacity_positive"),
        CheckConstraint("id ~ '^[a-z0-9][a-z0-9-]{0,62}$'", name="id_format"),
        CheckConstraint("engine IN ('postgres', 'citus')", name="engine"),
    )

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    region: Mapped[str] = mapped_column(String(32), index=True)
    # The DSN the API connects with (the unprivileged app role).
    dsn: Mapped[str] = mapped_column(Text)
    # The DSN migrations run with (the role that owns the tables).
    admin_dsn: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), server_default=ShardState.ACTIVE.value)
    # The number of tenants the shard is meant to hold; placement never exceeds it.
    capacity: Mapped[int] = mapped_column(Integer, server_default="1000")
    # Holds one tenant (a large organisation): placement by region never picks it.
    dedicated: Mapped[bool] = mapped_column(Boolean, server_default="false")
    # What the database runs (sharding.engine.ShardEngine): checked against the database
    # when the shard is added; what depends on it is decided by sharding.engine.traits.
    engine: Mapped[str] = mapped_column(String(16), server_default="postgres")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TenantResidency(TenantScoped, ShardBase):
    """The shard's own record that a tenant lives here, at which epoch, and if writable.

    ``meridian_enter_tenant()`` checks it at the start of every transaction; a move
    fences writes by taking this row ``FOR UPDATE`` and flipping ``writable``.
    """

    __tablename__ = "tenant_residency"

    epoch: Mapped[int] = mapped_column(Integer)
    writable: Mapped[bool] = mapped_column(Boolean, server_default="true")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
