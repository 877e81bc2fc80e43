from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import CheckConstraint, Date, ForeignKeyConstraint, Index, Numeric, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from meridian.crud.model import Record, RecordRow, external_id_index
from tenancy.planes import ShardBase


class Opportunity(Record, ShardBase):
    __tablename__ = "opportunity"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "account_id"],
            ["account.tenant_id", "account.id"],
            name="fk_opportunity_account",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "pipeline_id", "stage_id"],
            ["pipeline_stage.tenant_id", "pipeline_stage.pipeline_id", "pipeline_stage.id"],
            name="fk_opportunity_stage",
        ),
        CheckConstraint("amount >= 0", name="amount_non_negative"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_format"),
        Index("ix_opportunity_account", "tenant_id", "account_id", "id"),
        Index("ix_opportunity_stage", "tenant_id", "pipeline_id", "stage_id", "id"),
        Index("ix_opportunity_owner", "tenant_id", "owner_id", "id"),
        Index("ix_opportunity_close", "tenant_id", "expected_close_date", "id"),
        Index("ix_opportunity_amount", "tenant_id", "amount", "id"),
        Index("ix_opportunity_name", "tenant_id", "name", "id"),
        Index("ix_opportunity_created", "tenant_id", "created_at", "id"),
        Index("ix_opportunity_updated", "tenant_id", "updated_at", "id"),
        external_id_index("opportunity"),
    )

    account_id: Mapped[UUID]
    name: Mapped[str] = mapped_column(String(255))
    amount: Mapped[Decimal] = mapped_column(Numeric(18, 2), server_default="0")
    currency: Mapped[str] = mapped_column(String(3))
    pipeline_id: Mapped[UUID]
    stage_id: Mapped[UUID]
    expected_close_date: Mapped[date | None] = mapped_column(Date)
    owner_id: Mapped[UUID | None]
    # Its id in the client's own system (batch upserts find it by that).
    external_id: Mapped[str | None] = mapped_column(String(255))
    # The tenant's own fields (meridian.crud.custom), by name.
    custom: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")


class OpportunityRow(RecordRow):
    account_id: UUID
    name: str
    amount: Decimal
    currency: str
    pipeline_id: UUID
    stage_id: UUID
    expected_close_date: date | None
    owner_id: UUID | None
    external_id: str | None
    custom: dict[str, Any]
