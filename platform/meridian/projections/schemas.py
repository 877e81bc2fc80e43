"""What the interaction endpoints answer (the OpenAPI document's view of it)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel

RecordKind = Literal["contact", "account", "opportunity"]


class RecordRef(BaseModel):
    """The record a summary is about."""

    kind: RecordKind
    id: UUID
    # An account's or opportunity's name; a contact's first and last name.
    name: str
    owner_id: UUID | None


class CountsByType(BaseModel):
    call: int
    email: int
    meeting: int
    note: int
    task: int


class InteractionSummaryRead(BaseModel):
    """A record's activities in short, as the worker last computed them (``computed_at``;
    null, with zero counts, when nothing has been computed for the record yet)."""

    record: RecordRef
    last_activity_at: datetime | None
    last_activity_type: str | None
    last_activity_id: UUID | None
    # Activities in the 30 (90) days up to computed_at, and per type.
    activities_30d: int
    activities_90d: int
    by_type_30d: CountsByType
    by_type_90d: CountsByType
    # The earliest task due after computed_at.
    next_task_id: UUID | None
    next_task_due_at: datetime | None
    computed_at: datetime | None


class InteractionPage(BaseModel):
    data: list[InteractionSummaryRead]
    next_cursor: str | None
