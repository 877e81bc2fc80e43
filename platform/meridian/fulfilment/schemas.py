"""The fulfilment API's bodies: the tenant's steps, and an opportunity's sagas."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field, StringConstraints

from meridian.crud.schemas import InputModel, Versioned, json_integer
from meridian.web.targets import MAX_URL_LENGTH, URL_PATTERN

MAX_STEPS = 20
MAX_ATTEMPTS = 10
MAX_TIMEOUT = 60.0
STEP_NAME = r"^[a-z][a-z0-9_-]{0,63}$"

StepName = Annotated[str, StringConstraints(pattern=STEP_NAME)]
# A step's call carries a JSON body, so it is one of the methods that take one.
Method = Literal["POST", "PUT", "PATCH", "DELETE"]
Url = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_URL_LENGTH, pattern=URL_PATTERN)
]
Attempts = Annotated[int, Field(ge=1, le=MAX_ATTEMPTS), json_integer]
Timeout = Annotated[float, Field(gt=0, le=MAX_TIMEOUT)]


class Call(InputModel):
    method: Method = Field(description="The HTTP method.")
    url: Url = Field(
        description="http:// or https:// URL; a host that is or resolves to a private or "
        "loopback address is refused unless the platform allows it."
    )


class StepConfig(InputModel):
    name: StepName = Field(
        description="Unique in the list: lower case, digits, _ and -; part of the "
        "Idempotency-Key of the step's calls."
    )
    action: Call = Field(description="The call that does the step.")
    compensation: Call = Field(description="The call that undoes it (a later step failed).")
    timeout: Timeout | None = Field(
        default=None, description="Seconds a call may take (default: the platform's)."
    )
    attempts: Attempts | None = Field(
        default=None,
        description="Calls before the step (or its compensation) has failed (default: the "
        "platform's).",
    )


class StepsUpdate(InputModel):
    steps: list[StepConfig] = Field(
        max_length=MAX_STEPS, description="In order; an empty list starts no more sagas."
    )


class StepsRead(Versioned):
    steps: list[StepConfig]
    version: int = Field(description="0 until the steps are first set; the ETag.")
    updated_at: datetime | None


class SagaStepRead(BaseModel):
    position: int
    name: str
    state: Literal["pending", "running", "completed", "failed", "compensating", "compensated"]
    attempts: int = Field(description="Calls of the step's action so far.")
    max_attempts: int
    compensation_attempts: int
    started_at: datetime | None
    completed_at: datetime | None
    compensated_at: datetime | None
    updated_at: datetime
    last_error: str | None
    result: dict[str, Any] | None = Field(
        description="status and body (JSON, or the start of the text) of the call that "
        "completed the step."
    )


class SagaRead(BaseModel):
    id: UUID
    opportunity_id: UUID
    won_event_id: UUID = Field(description="The opportunity.won event that started it.")
    state: Literal["running", "compensating", "completed", "compensated", "failed"]
    config_version: int = Field(description="The version of the steps it runs.")
    error: str | None = Field(description="Why it failed (state failed).")
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    steps: list[SagaStepRead]


class SagaList(BaseModel):
    opportunity_id: UUID
    data: list[SagaRead] = Field(description="Oldest first.")
