"""Shard topology (control plane) and tenant residency (on every shard)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
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


class MoveState(enum.StrEnum):
    """Where an online tenant move stands (``sharding.mover``), in the order it goes."""

    PLANNED = "planned"
    COPYING = "copying"  # initial copy of the tenant's rows by logical replication
    CATCHING_UP = "catching_up"  # the target applies what changed during the copy
    VERIFYING = "verifying"  # source fenced; counts and hashes compared on both sides
    FREEZING = "freezing"  # verified: the target is made writable, the directory flips
    SWITCHED = "switched"  # the directory names the target; the source refuses the tenant
    CLEANING = "cleaning"  # replication dropped, the tenant's rows deleted from the source
    DONE = "done"
    FAILED = "failed"  # rolled back: the source serves the tenant as before
    CANCELLED = "cancelled"  # rolled back on an admin's request


FINAL_MOVE_STATES = frozenset({MoveState.DONE, MoveState.FAILED, MoveState.CANCELLED})
# The states a move goes through, in order, when nothing rolls it back.
MOVE_PATH = (
    MoveState.PLANNED,
    MoveState.COPYING,
    MoveState.CATCHING_UP,
    MoveState.VERIFYING,
    MoveState.FREEZING,
    MoveState.SWITCHED,
    MoveState.CLEANING,
    MoveState.DONE,
)


class TenantMove(ControlBase):
    """One online move of a tenant from its shard to another, persisted step by step so
    any process can resume it; at most one unfinished move per tenant."""

    __tablename__ = "tenant_move"
    __table_args__ = (
        CheckConstraint(
            "state IN (" + ", ".join(f"'{s.value}'" for s in MoveState) + ")",
            name="state",
        ),
        CheckConstraint("rollback_to IN ('failed', 'cancelled')", name="rollback_to"),
        CheckConstraint("source_shard_id <> target_shard_id", name="two_shards"),
        UniqueConstraint("tenant_id", "creation_key", name="uq_tenant_move_creation_key"),
        Index(
            "uq_tenant_move_unfinished",
            "tenant_id",
            unique=True,
            postgresql_where=text("state NOT IN ('done', 'failed', 'cancelled')"),
        ),
    )

    id: Mapped[UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    source_shard_id: Mapped[str] = mapped_column(String(63), ForeignKey("shard.id"))
    target_shard_id: Mapped[str] = mapped_column(String(63), ForeignKey("shard.id"))
    # The directory epoch the tenant had on the source; the target serves epoch + 1.
    epoch: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    # Set when the move is to be rolled back (a failure, a cancel): the state it ends
    # in once the rollback, itself resumable, has finished.
    rollback_to: Mapped[str | None] = mapped_column(String(16))
    # Per table: rows on the source ("total") and on the target ("copied"); the
    # verification's counts and hashes; rows deleted by the cleanup.
    progress: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # Bytes of WAL the target had still to apply when last measured.
    lag_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # When the source was fenced (writes refused) and how long writes stayed frozen.
    fenced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    freeze_ms: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The Idempotency-Key of the request that planned the move, and what it asked for.
    creation_key: Mapped[str | None] = mapped_column(String(255))
    creation_fingerprint: Mapped[bytes | None] = mapped_column(LargeBinary)
