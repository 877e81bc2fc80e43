"""Lead, conversion and scoring-rule request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from meridian.crud.schemas import (
    NOT_BLANK,
    CustomValues,
    Email,
    ExternalId,
    Flag,
    InputModel,
    IsoDate,
    Omittable,
    Phone,
    RecordRead,
    json_integer,
)
from meridian.leads.models import LeadSource
from meridian.leads.scoring import Condition
from meridian.opportunities.schemas import Amount, Currency, Name

FirstName = Annotated[str, StringConstraints(max_length=100)]
LastName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NOT_BLANK)]
Company = Annotated[str, StringConstraints(max_length=255)]
Title = Annotated[str, StringConstraints(max_length=200)]
# "converted" is set by POST /v1/leads/{id}/convert only.
LeadStatus = Literal["new", "working", "nurturing", "qualified", "unqualified"]
AnyLeadStatus = Literal["new", "working", "nurturing", "qualified", "unqualified", "converted"]


class LeadCreate(InputModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "first_name": "Grace",
                    "last_name": "Hopper",
                    "company": "Cobol Systems",
                    "email": "grace@cobol.example",
                    "source": "referral",
                }
            ]
        }
    )

    first_name: FirstName | None = None
    last_name: LastName
    company: Company | None = None
    title: Title | None = None
    email: Email | None = None
    phone: Phone | None = None
    source: LeadSource | None = None
    status: LeadStatus = "new"
    owner_id: UUID | None = None
    external_id: ExternalId | None = None
    custom: CustomValues | None = None


class LeadUpdate(InputModel):
    first_name: FirstName | None = None  # null clears it
    last_name: Omittable[LastName] = None
    company: Company | None = None
    title: Title | None = None
    email: Email | None = None
    phone: Phone | None = None
    source: LeadSource | None = None
    status: Omittable[LeadStatus] = None
    owner_id: UUID | None = None
    external_id: ExternalId | None = None  # null clears it
    custom: CustomValues | None = None  # a patch: a field set to null is cleared


class ScoreReason(BaseModel):
    rule_id: UUID
    name: str
    points: int
    reason: str


class LeadRead(RecordRead):
    first_name: str | None
    last_name: str
    company: str | None
    title: str | None
    email: str | None
    phone: str | None
    source: LeadSource | None
    status: AnyLeadStatus
    owner_id: UUID | None
    score: int
    score_details: list[ScoreReason]
    converted_at: datetime | None
    converted_account_id: UUID | None
    converted_contact_id: UUID | None
    converted_opportunity_id: UUID | None
    external_id: str | None
    custom: dict[str, Any]


# -- conversion ----------------------------------------------------------------------------
class ConvertOpportunity(InputModel):
    """The opportunity to open with the conversion (see POST /v1/opportunities)."""

    name: Name
    amount: Amount | None = None
    currency: Currency
    pipeline_id: UUID | None = None
    stage_id: UUID | None = None
    expected_close_date: IsoDate | None = None


class LeadConvert(InputModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"opportunity": {"name": "Cobol Systems: first order", "currency": "USD"}}]
        }
    )

    # An existing account to link; omitted, one is created, named account_name or else
    # the lead's company (or its name when it has none).
    account_id: UUID | None = None
    account_name: Name | None = None
    # An existing contact to link; omitted, one is created from the lead.
    contact_id: UUID | None = None
    opportunity: ConvertOpportunity | None = None
    # Owner of the records the conversion creates; omitted, the lead's owner.
    owner_id: UUID | None = None


class LeadConversion(BaseModel):
    lead: LeadRead
    account_id: UUID
    contact_id: UUID
    opportunity_id: UUID | None
    # False when the lead had been converted already: nothing was created this time.
    converted_now: bool


# -- scoring rules -------------------------------------------------------------------------
RuleName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NOT_BLANK)]
Points = Annotated[int, Field(ge=-1000, le=1000), json_integer]


class ScoringRuleCreate(InputModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Referred",
                    "points": 20,
                    "condition": {
                        "type": "field",
                        "field": "source",
                        "op": "eq",
                        "value": "referral",
                    },
                },
                {
                    "name": "Engaged",
                    "points": 15,
                    "condition": {"type": "activity", "activity_type": "call", "min_count": 2},
                },
            ]
        }
    )

    name: RuleName
    points: Points
    condition: Condition
    active: Flag = True


class ScoringRuleUpdate(InputModel):
    name: Omittable[RuleName] = None
    points: Omittable[Points] = None
    condition: Omittable[Condition] = None
    active: Omittable[Flag] = None


class ScoringRuleRead(RecordRead):
    name: str
    points: int
    condition: dict[str, Any]
    active: bool
