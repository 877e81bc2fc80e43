"""Share request and response bodies."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import ConfigDict, model_validator

from meridian.crud.schemas import Addressable, InputModel, one_present


class ShareCreate(InputModel):
    """Exactly one grantee: a user, or a team (a manager and everyone below them)."""

    model_config = ConfigDict(json_schema_extra=one_present("user_id", "team_id"))

    user_id: UUID | None = None
    team_id: UUID | None = None

    @model_validator(mode="after")
    def _one_grantee(self) -> ShareCreate:
        if (self.user_id is None) == (self.team_id is None):
            raise ValueError("exactly one of user_id and team_id is required")
        return self


class ShareRead(Addressable):
    id: UUID
    record_kind: str
    record_id: UUID
    user_id: UUID | None
    team_id: UUID | None
    created_by: UUID | None  # None: granted by an OAuth client
    created_at: datetime
