"""Fulfilment tables of a shard: the tenant's configured steps, and each saga run when an
opportunity is won, with its steps' states.

A saga's steps are a snapshot of the configuration taken when it started (a later change
of the configuration does not change a running saga), one row per step so each step's
state, attempts and last error are kept where the orchestrator writes them after every
transition. ``fulfilment_unfinished`` names the sagas not yet at an end, without any of
their data: the recovery job reads it across the shard's tenants (the relay's pattern)
to restart sagas whose job was lost.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from meridian.crud.model import one_of
from tenancy.planes import ShardBase, TenantScoped

# A saga: running its steps, then (after a step finally failed) compensating the completed
# ones in reverse order; it ends completed, compensated, or failed (a compensation
# finally failed: needs attention, POST .../fulfilment/retry resumes it).
SAGA_STATES = ("running", "compensating", "completed", "compensated", "failed")
FINISHED = ("completed", "compensated", "failed")
STEP_STATES = ("pending", "running", "completed", "failed", "compensating", "compensated")


class FulfilmentConfig(TenantScoped, ShardBase):
    """The tenant's ordered steps (one row per tenant; ``version`` is the ETag)."""

    __tablename__ = "fulfilment_config"
    __table_args__ = (Index("uq_fulfilment_config_tenant", "tenant_id", unique=True),)

    id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-10)
    # [{"name", "action": {"method", "url"}, "compensation": {"method", "url"},
    #   "timeout": seconds | null, "attempts": n | null}, ...] in order.
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    version: Mapped[int] = mapped_column(Integer, server_default="1")


class FulfilmentSaga(TenantScoped, ShardBase):
    __tablename__ = "fulfilment_saga"
    __table_args__ = (
        # One saga per won event: a redelivered event finds it and starts nothing.
        Index("uq_fulfilment_saga_won_event", "tenant_id", "won_event_id", unique=True),
        Index("ix_fulfilment_saga_opportunity", "tenant_id", "opportunity_id", "created_at"),
        CheckConstraint(one_of("state", SAGA_STATES), name="state"),
    )

    id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-10)
    # No foreign key: a saga outlives its opportunity (its history stays readable).
    opportunity_id: Mapped[UUID]
    won_event_id: Mapped[UUID]
    # The opportunity's owner when it was won (the events' owner).
    owner_id: Mapped[UUID | None]
    state: Mapped[str] = mapped_column(String(16))
    # The opportunity's fields from the won event, sent to every step.
    opportunity: Mapped[dict[str, Any]] = mapped_column(JSONB)
    config_version: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Bumped by every transition.
    version: Mapped[int] = mapped_column(Integer, server_default="1")


class FulfilmentStep(TenantScoped, ShardBase):
    __tablename__ = "fulfilment_step"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "saga_id"],
            ["fulfilment_saga.tenant_id", "fulfilment_saga.id"],
            name="fk_fulfilment_step_saga",
            ondelete="CASCADE",
        ),
        Index("uq_fulfilment_step_position", "tenant_id", "saga_id", "position", unique=True),
        CheckConstraint(one_of("state", STEP_STATES), name="state"),
    )

    id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-10)
    saga_id: Mapped[UUID]
    position: Mapped[int] = mapped_column(SmallInteger)
    name: Mapped[str] = mapped_column(String(64))
    # {"method", "url"} of the step's call and of its compensation (the snapshot).
    action: Mapped[dict[str, Any]] = mapped_column(JSONB)
    compensation: Mapped[dict[str, Any]] = mapped_column(JSONB)
    timeout: Mapped[float] = mapped_column(Float)
    max_attempts: Mapped[int] = mapped_column(SmallInteger)
    state: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    compensation_attempts: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    compensated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(Text)
    # {"status": code, "body": JSON or a text excerpt} of the call that completed it.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class FulfilmentUnfinished(TenantScoped, ShardBase):
    """A saga not yet at an end (deleted when it ends): the recovery job's worklist."""

    __tablename__ = "fulfilment_unfinished"

    id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-10)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
