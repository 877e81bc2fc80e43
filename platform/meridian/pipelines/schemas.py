from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field, StringConstraints, WithJsonSchema

from meridian.crud.schemas import (
    NOT_BLANK,
    Flag,
    InputModel,
    Omittable,
    RecordRead,
    decimal_text,
    json_integer,
)

# A pipeline's stages are few and every reorder rewrites the positions after the moved
# one, so the count is bounded to keep stage edits cheap.
MAX_STAGES = 50

Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NOT_BLANK)]
# Numeric(5, 2) in the database: percent with two decimals, sent as a number or a string.
PROBABILITY_TEXT = r"^(-0+(\.0+)?|0*(100(\.0+)?|[0-9]{1,2}(\.[0-9]{1,2}0*)?))$"
Probability = Annotated[
    Decimal,
    decimal_text(PROBABILITY_TEXT),
    Field(ge=0, le=100, max_digits=5, decimal_places=2),
    WithJsonSchema(
        {
            "description": "Win probability in percent, 0 to 100 with at most two decimals.",
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 100, "multipleOf": 0.01},
                {"type": "string", "pattern": PROBABILITY_TEXT},
            ],
        }
    ),
]
StageKind = Literal["open", "won", "lost"]
Position = Annotated[int, Field(ge=0, lt=MAX_STAGES), json_integer]


class StageCreate(InputModel):
    name: Name
    probability: Probability
    kind: StageKind = "open"


class StageAdd(StageCreate):
    # Omitted: appended after the last stage; otherwise inserted there, shifting the rest.
    position: Position | None = None


class StageUpdate(InputModel):
    name: Omittable[Name] = None
    probability: Omittable[Probability] = None
    kind: Omittable[StageKind] = None
    position: Omittable[Position] = None


class PipelineCreate(InputModel):
    name: Name
    # The tenant's first pipeline becomes the default whatever this says: a tenant
    # always has exactly one default pipeline.
    is_default: Flag = False
    stages: list[StageCreate] = Field(min_length=1, max_length=MAX_STAGES)


class PipelineUpdate(InputModel):
    name: Omittable[Name] = None
    is_default: Omittable[Flag] = None


class StageRead(RecordRead):
    pipeline_id: UUID
    name: str
    position: int
    probability: float = Field(
        ge=0, le=100, description="Win probability in percent (0-100, two decimals at most)."
    )
    kind: StageKind


class PipelineRead(RecordRead):
    name: str
    is_default: bool
    stages: list[StageRead]
