"""Webhook subscriptions and their deliveries (shard tables).

``webhook`` is a subscription: where to send which events, and its signing secret,
sealed with the tenant's data key (``secret_enc``; ``meridian.encryption``). A
``webhook_delivery`` is one event for one subscription: its payload (the public event),
its state and the last attempt's outcome. Live deliveries are unique per (subscription,
event), so an event the stream hands out twice is delivered once; a replay makes new
rows, told apart by ``replay_id``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict
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
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from meridian.crud.model import Record, RecordRow
from tenancy.planes import ShardBase, TenantScoped

STATUSES = ("pending", "delivered", "failed", "dead")


class Webhook(Record, ShardBase):
    __tablename__ = "webhook"
    __table_args__ = (
        Index("ix_webhook_created", "tenant_id", "created_at", "id"),
        # The consumer reads a tenant's enabled subscriptions for every event.
        Index("ix_webhook_enabled", "tenant_id", "enabled"),
    )

    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str | None] = mapped_column(String(500))
    # ["contact.updated", "opportunity.*", "*"], as given.
    event_types: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    # {field: value} equalities on the event's data.record; {} matches every event.
    filter: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # The event kinds whose read permission the subscriber had: nothing else is sent.
    kinds: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Dead deliveries since the last success (or re-enabling): the disabling rule.
    consecutive_dead: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The signing secret, sealed (meridian.encryption.fields.SENSITIVE["webhook"]).
    secret_enc: Mapped[bytes] = mapped_column(LargeBinary)
    secret_bidx: Mapped[bytes | None] = mapped_column(LargeBinary)
    enc_version: Mapped[int] = mapped_column(Integer)


class WebhookRow(RecordRow):
    """A subscription as its repository reads it (never its secret)."""

    url: str
    description: str | None
    # Bare: the row-type check compares hints with the columns' Python types.
    event_types: list  # type: ignore[type-arg]
    filter: object  # JSON: an object of field equalities
    kinds: list  # type: ignore[type-arg]
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    consecutive_dead: int
    last_success_at: datetime | None


class WebhookDelivery(TenantScoped, ShardBase):
    __tablename__ = "webhook_delivery"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "subscription_id"],
            ["webhook.tenant_id", "webhook.id"],
            name="fk_webhook_delivery_subscription",
            ondelete="CASCADE",
        ),
        CheckConstraint("status IN ('pending', 'delivered', 'failed', 'dead')", name="status"),
        # An event reaches a subscription once, however often the stream hands it out.
        Index(
            "uq_webhook_delivery_event",
            "tenant_id",
            "subscription_id",
            "event_id",
            unique=True,
            postgresql_where=text("replay_id IS NULL"),
        ),
        Index(
            "uq_webhook_delivery_replay",
            "tenant_id",
            "subscription_id",
            "event_id",
            "replay_id",
            unique=True,
            postgresql_where=text("replay_id IS NOT NULL"),
        ),
        Index("ix_webhook_delivery_list", "tenant_id", "subscription_id", "created_at", "id"),
        Index(
            "ix_webhook_delivery_status",
            "tenant_id",
            "subscription_id",
            "status",
            "created_at",
            "id",
        ),
    )

    id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-10)
    subscription_id: Mapped[UUID]
    event_id: Mapped[UUID]
    event_seq: Mapped[int] = mapped_column(BigInteger)
    event_type: Mapped[str] = mapped_column(String(64))
    # The event as the receiver gets it (meridian.events.log.public).
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # Set on the deliveries a replay made (one id per replay).
    replay_id: Mapped[UUID | None]
    status: Mapped[str] = mapped_column(String(16), server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Bumped by a manual retry: jobs of an earlier run of this delivery stop.
    run: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    first_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(1000))
    # At most 1 KB of the receiver's last answer.
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), sort_order=90
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), sort_order=91
    )


class DeliveryRow(TypedDict):
    """A delivery as the API lists it (without its payload)."""

    id: UUID
    subscription_id: UUID
    event_id: UUID
    event_seq: int
    event_type: str
    replay_id: UUID | None
    status: str
    attempts: int
    first_attempt_at: datetime | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    response_excerpt: str | None
    created_at: datetime
    updated_at: datetime
