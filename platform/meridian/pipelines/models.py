from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ColumnElement,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    Numeric,
    String,
    TypeDecorator,
    UniqueConstraint,
    cast,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from meridian.crud.model import Record, RecordRow
from tenancy.planes import ShardBase


class Percent(TypeDecorator[float]):
    """A percentage with two decimals: numeric(5, 2) stored, read as float8 by every
    statement that selects it (raw asyncpg reads included), so responses carry a JSON
    number. Exact: each such value's float prints back as the same two decimals."""

    impl = Numeric(5, 2, asdecimal=False)
    cache_ok = True

    def column_expression(self, colexpr: ColumnElement[Any]) -> ColumnElement[Any]:
        return cast(colexpr, Float)


class Pipeline(Record, ShardBase):
    __tablename__ = "pipeline"
    __table_args__ = (
        # At most one default pipeline per tenant (the unique key includes tenant_id).
        Index(
            "uq_pipeline_default",
            "tenant_id",
            unique=True,
            postgresql_where=text("is_default"),
        ),
        Index("ix_pipeline_name", "tenant_id", "name", "id"),
        Index("ix_pipeline_created", "tenant_id", "created_at", "id"),
    )

    name: Mapped[str] = mapped_column(String(200))
    is_default: Mapped[bool] = mapped_column(Boolean, server_default="false")


class PipelineStage(Record, ShardBase):
    __tablename__ = "pipeline_stage"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "pipeline_id"],
            ["pipeline.tenant_id", "pipeline.id"],
            name="fk_pipeline_stage_pipeline",
            ondelete="CASCADE",
        ),
        # Lets opportunities reference (pipeline, stage) together, so a stage of
        # another pipeline can never be set.
        UniqueConstraint("tenant_id", "pipeline_id", "id", name="uq_pipeline_stage_pipeline_id"),
        CheckConstraint("probability >= 0 AND probability <= 100", name="probability_range"),
        CheckConstraint("kind IN ('open', 'won', 'lost')", name="kind"),
        Index("ix_pipeline_stage_order", "tenant_id", "pipeline_id", "position", "id"),
    )

    pipeline_id: Mapped[UUID]
    name: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer)
    # Win probability in percent, used for the weighted pipeline value.
    probability: Mapped[float] = mapped_column(Percent)
    kind: Mapped[str] = mapped_column(String(8), server_default="open")


class StageRow(RecordRow):
    pipeline_id: UUID
    name: str
    position: int
    probability: float
    kind: str


class PipelineColumns(RecordRow):
    name: str
    is_default: bool


class PipelineRow(PipelineColumns, total=False):
    """A pipeline as its repository reads it; its representation adds the stages,
    ordered by position (``PipelineRepository`` reads both). Not ``NotRequired``: under
    postponed annotations Python 3.11 counts such a key as required."""

    stages: list[StageRow]
