"""Duplicate rules, duplicates found, merges and their undo: request and response bodies.

A merge request's ``fields`` is built per kind from the kind's own update schema
(``AccountUpdate``, ...): each field takes the id of the record whose value wins, or
``{"value": ...}`` with a value the update schema accepts, so the document states every
value the API takes.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, Field, StringConstraints, create_model, field_validator
from pydantic_core import PydanticUndefined

from meridian.accounts.schemas import AccountRead, AccountUpdate
from meridian.contacts.schemas import ContactRead, ContactUpdate
from meridian.crud.schemas import NOT_BLANK, Addressable, Flag, InputModel, Omittable, RecordRead
from meridian.events.schemas import EventActor
from meridian.leads.schemas import LeadRead, LeadUpdate

R = TypeVar("R")
# At most this many records merged into one survivor in one request.
MAX_MERGED = 100
MAX_CONDITIONS = 5
RuleName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NOT_BLANK)]
Threshold = Annotated[
    float,
    Field(
        ge=0.1,
        le=1.0,
        description="The least similarity (pg_trgm's trigram similarity, 0.1-1) that holds.",
    ),
]
# Omittable of a type made at run time (mypy takes only a type written out in it).
_OMITTABLE: Any = Omittable
CustomName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]

# -- duplicate rules -------------------------------------------------------------------------
AccountField = Literal["name", "domain", "tax_id"]
ContactField = Literal["email", "phone", "tax_id", "full_name", "last_name", "account_id"]
LeadField = Literal["email", "phone", "full_name", "last_name", "company"]
AccountText = Literal["name"]
PersonText = Literal["full_name", "last_name"]
LeadText = Literal["full_name", "last_name", "company"]


class AccountExactCondition(InputModel):
    """Equal values (a sealed field through its blind index; text ignoring case,
    punctuation and spacing)."""

    type: Literal["exact"]
    field: AccountField


class AccountFuzzyCondition(InputModel):
    """Similar text: trigram similarity at least the threshold."""

    type: Literal["fuzzy"]
    field: AccountText
    threshold: Threshold = 0.5


class ContactExactCondition(InputModel):
    """Equal values (a sealed field through its blind index; text ignoring case,
    punctuation and spacing)."""

    type: Literal["exact"]
    field: ContactField


class ContactFuzzyCondition(InputModel):
    """Similar text: trigram similarity at least the threshold."""

    type: Literal["fuzzy"]
    field: PersonText
    threshold: Threshold = 0.5


class LeadExactCondition(InputModel):
    """Equal values (a sealed field through its blind index; text ignoring case,
    punctuation and spacing)."""

    type: Literal["exact"]
    field: LeadField


class LeadFuzzyCondition(InputModel):
    """Similar text: trigram similarity at least the threshold."""

    type: Literal["fuzzy"]
    field: LeadText
    threshold: Threshold = 0.5


class ExactCondition(InputModel):
    """Equal values; the field must be one of the rule's kind."""

    type: Literal["exact"]
    field: AccountField | ContactField | LeadField


class FuzzyCondition(InputModel):
    """Similar text; the field must be one of the rule's kind."""

    type: Literal["fuzzy"]
    field: AccountText | LeadText
    threshold: Threshold = 0.5


_ALL_HOLD = Field(
    min_length=1,
    max_length=MAX_CONDITIONS,
    description="All must hold for two records to match (each field at most once).",
)
AccountConditions = Annotated[
    list[Annotated[AccountExactCondition | AccountFuzzyCondition, Field(discriminator="type")]],
    _ALL_HOLD,
]
ContactConditions = Annotated[
    list[Annotated[ContactExactCondition | ContactFuzzyCondition, Field(discriminator="type")]],
    _ALL_HOLD,
]
LeadConditions = Annotated[
    list[Annotated[LeadExactCondition | LeadFuzzyCondition, Field(discriminator="type")]],
    _ALL_HOLD,
]
AnyConditions = Annotated[
    list[Annotated[ExactCondition | FuzzyCondition, Field(discriminator="type")]], _ALL_HOLD
]


class _RuleCreate(InputModel):
    name: RuleName
    active: Flag = True


class AccountRuleCreate(_RuleCreate):
    kind: Literal["account"]
    conditions: AccountConditions


class ContactRuleCreate(_RuleCreate):
    kind: Literal["contact"]
    conditions: ContactConditions


class LeadRuleCreate(_RuleCreate):
    kind: Literal["lead"]
    conditions: LeadConditions


DuplicateRuleCreate = Annotated[
    AccountRuleCreate | ContactRuleCreate | LeadRuleCreate, Field(discriminator="kind")
]


class DuplicateRuleUpdate(InputModel):
    name: Omittable[RuleName] = None
    # Checked against the rule's kind (422 naming the field a kind does not have).
    conditions: Omittable[AnyConditions] = None
    active: Omittable[Flag] = None


class ConditionRead(BaseModel):
    type: Literal["exact", "fuzzy"]
    field: str
    threshold: float | None = None


class DuplicateRuleRead(RecordRead):
    kind: Literal["account", "contact", "lead"]
    name: str
    conditions: list[ConditionRead]
    active: bool


# -- duplicates found -------------------------------------------------------------------------
class MatchedRule(BaseModel):
    id: UUID | None = Field(description="The tenant's rule; null for a default rule.")
    name: str
    score: float = Field(description="How well the rule matched: 0-1, 1 for exact matches.")


class DuplicateMatch(BaseModel, Generic[R]):
    record: R
    score: float = Field(description="The best score of the rules that matched.")
    rules: list[MatchedRule] = Field(description="The rules that matched, best first.")


class AppliedRule(BaseModel):
    id: UUID | None
    name: str


class Duplicates(BaseModel, Generic[R]):
    record_id: UUID = Field(description="The record whose duplicates these are.")
    data: list[DuplicateMatch[R]] = Field(description="Best first (score, then id).")
    rules: list[AppliedRule] = Field(
        description="The rules compared: the tenant's active rules of the kind, or the "
        "default ones when it has defined none."
    )


# -- merges --------------------------------------------------------------------------------------
class CustomValueChoice(InputModel):
    value: Any = Field(description="A value the custom field takes (null clears it).")


def _value_model(prefix: str, name: str, info: Any) -> type[InputModel]:
    value = copy.copy(info)
    value.default = PydanticUndefined  # the value is required (it may be null if nullable)
    return create_model(
        f"{prefix}{name.title().replace('_', '')}Value",
        __base__=InputModel,
        value=(info.annotation, value),
    )


def fields_model(prefix: str, update: type[InputModel]) -> type[InputModel]:
    """``<Kind>MergeFields``: per field of ``update``, the id of the record whose value
    the survivor takes, or ``{"value": ...}``; ``custom`` per custom field name."""
    fields: dict[str, Any] = {}
    for name, info in update.model_fields.items():
        if name == "custom":
            continue
        choice = UUID | _value_model(prefix, name, info)
        fields[name] = (_OMITTABLE[choice], None)
    fields["custom"] = (
        _OMITTABLE[dict[CustomName, UUID | CustomValueChoice]],
        Field(default=None, max_length=200),
    )
    return create_model(
        f"{prefix}Fields",
        __base__=InputModel,
        __doc__="Per field, the id of the record whose value wins (the survivor's or a "
        "merged one's) or {\"value\": ...}. A field left out keeps the survivor's value, "
        "or when it has none the first merged record's that has one.",
        **fields,
    )


class _MergeRequest(InputModel):
    survivor_id: UUID
    merged_ids: Annotated[
        list[UUID],
        Field(
            min_length=1,
            max_length=MAX_MERGED,
            json_schema_extra={"uniqueItems": True},
            description=f"The records merged into the survivor and deleted (1-{MAX_MERGED}).",
        ),
    ]
    dry_run: Flag = Field(
        default=False,
        description="Preview only: the merge runs and is rolled back, nothing changes.",
    )

    @field_validator("merged_ids")
    @classmethod
    def _distinct(cls, ids: list[UUID]) -> list[UUID]:
        if len(set(ids)) != len(ids):
            raise ValueError("must not repeat an id")
        return ids


def merge_model(prefix: str, update: type[InputModel]) -> type[_MergeRequest]:
    fields = fields_model(f"{prefix}Merge", update)
    return create_model(
        f"{prefix}Merge",
        __base__=_MergeRequest,
        fields=(_OMITTABLE[fields], None),
    )


AccountMerge = merge_model("Account", AccountUpdate)
ContactMerge = merge_model("Contact", ContactUpdate)
LeadMerge = merge_model("Lead", LeadUpdate)
MergeRequest = _MergeRequest


class FieldCandidate(BaseModel):
    record_id: UUID
    value: Any


class FieldChoice(BaseModel):
    chosen: UUID | None = Field(
        description="The record whose value the survivor takes; null for a value given."
    )
    value: Any = Field(description="The survivor's value after the merge (masked as a GET).")
    candidates: list[FieldCandidate] = Field(description="Each record's value, survivor first.")


class MergeResult(Addressable, Generic[R]):
    dry_run: bool
    merge_id: UUID | None = Field(description="The merge (GET /v1/merges/{id}); null in a dry run.")
    kind: Literal["account", "contact", "lead"]
    survivor: R = Field(description="The survivor after the merge, as a GET shows it.")
    merged_ids: list[UUID]
    reparented: dict[str, int] = Field(
        description="References moved to the survivor, per <table>.<column>."
    )
    fields: dict[str, FieldChoice] | None = Field(
        description="A dry run's per-field preview (custom fields as custom.<name>); null "
        "for a merge made."
    )


class SkippedReference(BaseModel):
    table: str
    column: str
    id: UUID = Field(description="The row that referred to a merged record.")
    reason: Literal["deleted", "changed", "conflict"]


class MergeRead(BaseModel):
    id: UUID
    kind: Literal["account", "contact", "lead"]
    survivor_id: UUID
    merged_ids: list[UUID]
    state: Literal["merged", "undone", "expired"] = Field(
        description="merged; undone; expired (older than 30 days: its snapshot is gone)."
    )
    actor: EventActor
    created_at: datetime
    undo_until: datetime = Field(description="Until when the merge can be undone.")
    undone_at: datetime | None
    undone_by: EventActor | None
    reparented: dict[str, int]
    skipped: list[SkippedReference] | None = Field(
        description="After an undo: references it left where they were, and why."
    )


class MergeUndo(InputModel):
    force: Flag = Field(
        default=False,
        description="Undo even though the survivor changed since the merge: its values "
        "go back to what they were before the merge.",
    )


READ_MODELS: dict[str, type[RecordRead]] = {
    "account": AccountRead,
    "contact": ContactRead,
    "lead": LeadRead,
}
MERGE_MODELS: dict[str, type[_MergeRequest]] = {
    "account": AccountMerge,
    "contact": ContactMerge,
    "lead": LeadMerge,
}
UPDATE_MODELS: dict[str, type[InputModel]] = {
    "account": AccountUpdate,
    "contact": ContactUpdate,
    "lead": LeadUpdate,
}
