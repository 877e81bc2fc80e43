from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, StringConstraints, model_validator

from meridian.crud.schemas import InputModel

ActivityType = Literal["call", "email", "meeting", "note", "task"]
Subject = Annotated[str, StringConstraints(min_length=1, max_length=255)]
LINKS = ("contact_id", "account_id", "opportunity_id")


class ActivityCreate(InputModel):
    type: ActivityType
    subject: Subject
    body: str | None = None
    # Aware only: a naive time would be read in some server's zone and misplace the
    # activity on every timeline.
    occurred_at: AwareDatetime
    contact_id: UUID | None = None
    account_id: UUID | None = None
    opportunity_id: UUID | None = None
    owner_id: UUID | None = None

    @model_validator(mode="after")
    def _linked(self) -> ActivityCreate:
        if all(getattr(self, link) is None for link in LINKS):
            raise ValueError("at least one of contact_id, account_id, opportunity_id is required")
        return self


class ActivityRead(BaseModel):
    """Immutable: no version and no updated_at (the ETag is constant)."""

    id: UUID
    type: ActivityType
    subject: str
    body: str | None
    occurred_at: datetime
    contact_id: UUID | None
    account_id: UUID | None
    opportunity_id: UUID | None
    owner_id: UUID | None
    created_at: datetime
