"""The outbox tables of a shard.

Every write inserts its events into ``event_pending`` in the write's own transaction.
``event_outbox`` is the tenant's event log: the numberer (``meridian.events.outbox``)
moves committed events there, numbered by the tenant's ``event_sequence`` without gaps
and in the order it finds them, so a reader that sees ``seq`` N has every event before it
too: what makes ``after=<seq>`` cursors, replays and ``Last-Event-ID`` resumption exact.
``event_relay`` is how far the relay has published a tenant's log to the broker. All
four carry ``tenant_id`` first and move with the tenant.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import BigInteger, DateTime, Identity, Index, String, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tenancy.planes import ShardBase, TenantScoped


class EventFields:
    """What an event says, the same waiting for its number and in the log."""

    type: Mapped[str] = mapped_column(String(64))
    record_kind: Mapped[str] = mapped_column(String(32))
    record_id: Mapped[UUID | None]
    # The record's owner when the event happened: record scope for readers of events of
    # records that no longer exist.
    owner_id: Mapped[UUID | None]
    actor_type: Mapped[str] = mapped_column(String(8))
    actor_id: Mapped[str | None] = mapped_column(String(255))
    occurred_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # {"changes": {field: {"old", "new"} | {"changed": true}}, "data": {...}}: never a
    # sensitive field's value, only that it changed.
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)


class EventOutbox(EventFields, TenantScoped, ShardBase):
    __tablename__ = "event_outbox"
    __table_args__ = (
        Index("uq_event_outbox_id", "tenant_id", "id", unique=True),
        # A record's history, and the records' events an events page scopes by.
        Index("ix_event_outbox_record", "tenant_id", "record_id", "seq"),
        # Retention and replays by time.
        Index("ix_event_outbox_occurred", "tenant_id", "occurred_at"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, sort_order=-10)
    id: Mapped[UUID]


class EventPending(EventFields, TenantScoped, ShardBase):
    """A committed write's events, waiting for their numbers."""

    __tablename__ = "event_pending"
    __table_args__ = (Index("ix_event_pending_pos", "tenant_id", "pos"),)

    # Keyed by the event's id: a move brings waiting events with the source's ``pos``,
    # which the target's sequence may draw again.
    id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-10)
    # Shard-wide and increasing: a record's later write takes its number after its
    # earlier write committed (the row lock between them), so ``pos`` orders them.
    pos: Mapped[int] = mapped_column(BigInteger, Identity(always=False))


class EventSequence(TenantScoped, ShardBase):
    __tablename__ = "event_sequence"

    last_seq: Mapped[int] = mapped_column(BigInteger)


class EventRelay(TenantScoped, ShardBase):
    __tablename__ = "event_relay"

    relayed_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    relayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
