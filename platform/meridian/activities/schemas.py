from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import ConfigDict, StringConstraints, model_validator

from meridian.crud.schemas import (
    NOT_BLANK,
    Addressable,
    InputModel,
    IsoDateTime,
    Versioned,
    any_present,
)

ActivityType = Literal["call", "email", "meeting", "note", "task"]
Subject = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=NOT_BLANK)]
LINKS = ("contact_id", "account_id", "opportunity_id", "lead_id", "case_id")


class ActivityCreate(InputModel):
    model_config = ConfigDict(json_schema_extra=any_present(*LINKS))

    type: ActivityType
    subject: Subject
    body: str | None = None
    # Aware only: a naive time would be read in some server's zone and misplace the
    # activity on every timeline.
    occurred_at: IsoDateTime
    contact_id: UUID | None = None
    account_id: UUID | None = None
    opportunity_id: UUID | None = None
    lead_id: UUID | None = None
    case_id: UUID | None = None
    owner_id: UUID | None = None

    @model_validator(mode="after")
    def _linked(self) -> ActivityCreate:
        if all(getattr(self, link) is None for link in LINKS):
            raise ValueError(f"at least one of {', '.join(LINKS)} is required")
        return self


class ActivityRead(Addressable, Versioned):
    """Immutable: no version and no updated_at (the ETag is constant)."""

    id: UUID
    type: ActivityType
    subject: str
    body: str | None
    occurred_at: datetime
    contact_id: UUID | None
    account_id: UUID | None
    opportunity_id: UUID | None
    lead_id: UUID | None
    case_id: UUID | None
    owner_id: UUID | None
    created_at: datetime
