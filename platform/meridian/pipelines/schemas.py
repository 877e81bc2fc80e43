from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field, StringConstraints

from meridian.crud.schemas import InputModel, RecordRead

# A pipeline's stages are few and every reorder rewrites the positions after the moved
# one, so the count is bounded to keep stage edits cheap.
MAX_STAGES = 50

Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
# Numeric(5, 2) in the database: percent with two decimals.
Probability = Annotated[Decimal, Field(ge=0, le=100, max_digits=5, decimal_places=2)]
StageKind = Literal["open", "won", "lost"]
Position = Annotated[int, Field(ge=0, lt=MAX_STAGES)]


class StageCreate(InputModel):
    name: Name
    probability: Probability
    kind: StageKind = "open"


class StageAdd(StageCreate):
    # Omitted: appended after the last stage; otherwise inserted there, shifting the rest.
    position: Position | None = None


class StageUpdate(InputModel):
    # All optional; an explicit null is refused by the service.
    name: Name | None = None
    probability: Probability | None = None
    kind: StageKind | None = None
    position: Position | None = None


class PipelineCreate(InputModel):
    name: Name
    # The tenant's first pipeline becomes the default whatever this says: a tenant
    # always has exactly one default pipeline.
    is_default: bool = False
    stages: list[StageCreate] = Field(min_length=1, max_length=MAX_STAGES)


class PipelineUpdate(InputModel):
    name: Name | None = None
    is_default: bool | None = None


class StageRead(RecordRead):
    pipeline_id: UUID
    name: str
    position: int
    probability: Decimal
    kind: StageKind


class PipelineRead(RecordRead):
    name: str
    is_default: bool
    stages: list[StageRead]
