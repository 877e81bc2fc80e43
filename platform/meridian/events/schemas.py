"""What the events API, the stream and webhooks show of an event."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field


class EventActor(BaseModel):
    type: str = Field(description="user, client (an OAuth client) or system.")
    id: str | None = Field(description="The user's id or the client's id; null for system.")


class EventRecord(BaseModel):
    kind: str = Field(description="contact, account, opportunity, activity, user, ...")
    id: UUID | None
    owner_id: UUID | None = Field(description="The record's owner when the event happened.")


class EventRead(BaseModel):
    id: UUID = Field(description="Unique, time-ordered (UUIDv7): deduplicate by it.")
    seq: int = Field(
        description="The tenant's event number: increasing without gaps in commit order; "
        "the cursor of /v1/events and the Last-Event-ID of /v1/stream."
    )
    type: str = Field(description="<kind>.<action>, e.g. contact.updated, opportunity.won.")
    occurred_at: datetime
    actor: EventActor
    record: EventRecord
    data: dict[str, Any] = Field(
        description="record: the record's fields after the change (before a deletion); "
        "changes: {field: {old, new}} per changed field, {changed: true} for an encrypted "
        "field, whose values never appear in an event."
    )


class EventPage(BaseModel):
    data: list[EventRead]
    next_cursor: str | None = Field(description="Set when more events follow at once.")
    last_seq: int = Field(
        description="The seq of the last event on this page (the request's after when it "
        "is empty): ask again with after=last_seq for what happens next."
    )
