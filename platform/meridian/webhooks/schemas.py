"""Webhook request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from meridian.crud.schemas import Flag, InputModel, IsoDateTime, Omittable, RecordRead, Versioned
from meridian.events import log
from meridian.events.schemas import EventRead
from meridian.web.targets import MAX_URL_LENGTH, URL_PATTERN

MAX_EVENT_TYPES = 20
MAX_FILTER_FIELDS = 20

# Event types of the kinds the log has, or *.
EVENT_TYPE_PATTERN = rf"^(\*|{log.ONE_TYPE})$"

TargetUrl = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        pattern=URL_PATTERN,
        description="Where deliveries are POSTed: http:// or https://, no credentials; a "
        "host that is or resolves to a private, loopback or link-local address is refused.",
        examples=["https://hooks.example.com/meridian"],
    ),
]
EventType = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=EVENT_TYPE_PATTERN,
        description="An event type (contact.updated), a kind (contact.*) or * for every "
        "event the subscriber may read.",
    ),
]
FilterField = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]
# Bounded numbers: the filter is stored as JSONB, which writes a float such as 1e160 back
# as a 161-digit integer that no JSON encoder of ours takes (and no record field holds).
_SAFE = 2**53
FilterValue = (
    Annotated[StrictStr, Field(max_length=1000)]
    | Annotated[StrictInt, Field(ge=-_SAFE, le=_SAFE)]
    # Strictly inside: an integer just past the bound would round onto it as a float.
    | Annotated[StrictFloat, Field(gt=-_SAFE, lt=_SAFE)]
    | StrictBool
    | None
)
Filter = Annotated[
    dict[FilterField, FilterValue],
    Field(
        max_length=MAX_FILTER_FIELDS,
        # Field names other than the pattern's are refused, which the document says too.
        json_schema_extra={"additionalProperties": False},
        description='Equalities on the event\'s data.record ({"stage_id": "..."}): an '
        "event is delivered when every field named has that value. {}: every event.",
    ),
]
EventTypes = Annotated[list[EventType], Field(min_length=1, max_length=MAX_EVENT_TYPES)]
Description = Annotated[str, Field(max_length=500)]


class WebhookCreate(InputModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "url": "https://hooks.example.com/meridian",
                    "event_types": ["opportunity.won", "contact.*"],
                    "filter": {},
                    "description": "Sync to billing",
                }
            ]
        }
    )

    url: TargetUrl
    event_types: EventTypes
    filter: Filter = Field(default_factory=dict)
    description: Description | None = None
    enabled: Flag = True


class WebhookUpdate(InputModel):
    url: Omittable[TargetUrl] = None
    event_types: Omittable[EventTypes] = None
    filter: Omittable[Filter] = None
    description: Description | None = None  # null clears it
    enabled: Omittable[Flag] = Field(
        default=None,
        description="true re-enables a disabled subscription (its count of "
        "dead deliveries starts again from 0).",
    )


class WebhookRead(RecordRead):
    url: str
    description: str | None
    event_types: list[str]
    filter: dict[str, Any]
    kinds: list[str] = Field(
        description="The event kinds this subscription receives: those its creator could "
        "read when the event types were last set."
    )
    enabled: bool
    disabled_reason: str | None = Field(description="Why the platform disabled it.")
    disabled_at: datetime | None
    consecutive_dead: int = Field(description="Dead deliveries since the last success.")
    last_success_at: datetime | None


class WebhookCreated(WebhookRead):
    secret: str = Field(
        description="The signing secret (whsec_...): shown here only, keep it. "
        "POST /v1/webhooks/{id}/rotate-secret makes a new one."
    )


class SecretRead(Versioned):
    id: UUID
    secret: str = Field(description="The new signing secret; the old one stops at once.")
    version: int


class DeliveryRead(BaseModel):
    id: UUID
    subscription_id: UUID
    event_id: UUID = Field(description="Also the webhook-id header receivers dedupe by.")
    event_seq: int
    event_type: str
    replay_id: UUID | None = Field(description="The replay that made it; null for live ones.")
    status: str = Field(
        description="pending (not tried yet), delivered, failed (retried at "
        "next_attempt_at) or dead (the retry window passed; retry it by hand)."
    )
    attempts: int
    first_attempt_at: datetime | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    response_excerpt: str | None = Field(description="At most 1 KB of the last answer.")
    created_at: datetime
    updated_at: datetime


class ReplayRequest(InputModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"since": "2026-03-01T00:00:00Z", "until": "2026-03-02T00:00:00Z"}]
        }
    )

    since: IsoDateTime = Field(description="From this time (inclusive).")
    until: IsoDateTime = Field(description="Up to this time (exclusive).")


class ReplayAccepted(BaseModel):
    replay_id: UUID
    count: int = Field(description="Deliveries made: one per matching event in the range.")


class WebhookEvent(EventRead):
    """What a receiver gets: the event as GET /v1/events shows it."""
