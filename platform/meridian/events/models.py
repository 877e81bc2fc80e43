"""The outbox tables of a shard.

``event_outbox`` is the tenant's event log: every write appends its events there in the
write's own transaction, numbered by the tenant's ``event_sequence``. The counter row is
taken by the last statement of the write (``meridian.events.outbox``), so a tenant's
events are numbered in commit order without gaps: a reader that sees ``seq`` N knows every
event before it is committed too, which is what makes ``after=<seq>`` cursors, replays and
``Last-Event-ID`` resumption exact. ``event_relay`` is how far the relay has published a
tenant's log to the broker. All three carry ``tenant_id`` first and move with the tenant.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import BigInteger, DateTime, Index, String, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tenancy.planes import ShardBase, TenantScoped


class EventOutbox(TenantScoped, ShardBase):
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


class EventSequence(TenantScoped, ShardBase):
    __tablename__ = "event_sequence"

    last_seq: Mapped[int] = mapped_column(BigInteger)


class EventRelay(TenantScoped, ShardBase):
    __tablename__ = "event_relay"

    relayed_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    relayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
