"""Support case request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import ConfigDict, StringConstraints

from meridian.crud.schemas import (
    NOT_BLANK,
    CustomValues,
    ExternalId,
    InputModel,
    IsoDateTime,
    Omittable,
    RecordRead,
)

Subject = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=NOT_BLANK)]
Description = Annotated[str, StringConstraints(max_length=32_000)]
Resolution = Annotated[str, StringConstraints(min_length=1, max_length=32_000, pattern=NOT_BLANK)]
CaseStatus = Literal["new", "open", "pending", "on_hold", "resolved", "closed"]
CasePriority = Literal["low", "normal", "high", "urgent"]
CaseOrigin = Literal["email", "phone", "web", "chat", "other"]


class CaseCreate(InputModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "subject": "Invoices show the wrong VAT rate",
                    "priority": "high",
                    "origin": "email",
                    "contact_id": "0192a2a4-5b3c-7d4e-8f90-1a2b3c4d5e6f",
                }
            ]
        }
    )

    subject: Subject
    description: Description | None = None
    status: CaseStatus = "new"
    priority: CasePriority = "normal"
    origin: CaseOrigin | None = None
    contact_id: UUID | None = None
    # Omitted with a contact: the contact's account.
    account_id: UUID | None = None
    owner_id: UUID | None = None
    # Omitted: the service level of the priority (urgent 4 h, high 1 day, normal 3 days,
    # low 7 days from creation).
    due_at: IsoDateTime | None = None
    # Required when the case is created resolved or closed.
    resolution: Resolution | None = None
    external_id: ExternalId | None = None
    custom: CustomValues | None = None


class CaseUpdate(InputModel):
    subject: Omittable[Subject] = None
    description: Description | None = None  # null clears it
    status: Omittable[CaseStatus] = None
    priority: Omittable[CasePriority] = None
    origin: CaseOrigin | None = None
    contact_id: UUID | None = None
    account_id: UUID | None = None
    owner_id: UUID | None = None
    due_at: Omittable[IsoDateTime] = None
    resolution: Resolution | None = None
    external_id: ExternalId | None = None  # null clears it
    custom: CustomValues | None = None  # a patch: a field set to null is cleared


class CaseRead(RecordRead):
    subject: str
    description: str | None
    status: CaseStatus
    priority: CasePriority
    origin: CaseOrigin | None
    contact_id: UUID | None
    account_id: UUID | None
    owner_id: UUID | None
    due_at: datetime
    resolution: str | None
    resolved_at: datetime | None
    closed_at: datetime | None
    external_id: str | None
    custom: dict[str, Any]
