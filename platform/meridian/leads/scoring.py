"""Lead scoring: a tenant's rules, what each one gives a lead, and why.

A rule gives its points while its condition holds: a condition on one of the lead's
fields (``{"type": "field", "field": "source", "op": "eq", "value": "referral"}``) or
on how many of its activities there are (``{"type": "activity", "activity_type":
"call", "min_count": 3}``; no type counts every activity). A lead's score is the sum of
the points of the active rules that hold, and ``score_details`` lists those rules with
the reason each holds, so a score can always be explained.

Evaluation is a pure function of the lead's fields, its activity counts and the rules;
``meridian.leads.service`` calls it when a lead is written, when an activity is logged
on it, and the worker calls it for every lead of a tenant whose rules changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, get_args
from uuid import UUID

from pydantic import Discriminator, Field, StringConstraints, Tag, TypeAdapter

from meridian.crud.schemas import InputModel
from meridian.leads.models import LeadSource

ActivityType = Literal["call", "email", "meeting", "note", "task"]
# The fields a condition may test. Email and phone are sealed: only whether the lead
# has one can be tested (their values are never in clear outside a request).
TextField = Literal["first_name", "last_name", "company", "title"]
ScoredField = Literal["first_name", "last_name", "company", "title", "source", "email", "phone"]
SEALED_FIELDS = ("email", "phone")
Text = Annotated[str, StringConstraints(min_length=1, max_length=255)]
_PRESENCE = ("present", "absent")


class _OnField(InputModel):
    type: Literal["field"]


class PresenceCondition(_OnField):
    """Whether the lead has a value (any field, encrypted ones included)."""

    field: ScoredField
    op: Literal["present", "absent"]


class TextCondition(_OnField):
    """A text field compared case-insensitively."""

    field: TextField
    op: Literal["eq", "ne", "contains", "starts"]
    value: Text


class TextInCondition(_OnField):
    field: TextField
    op: Literal["in"]
    value: Annotated[list[Text], Field(min_length=1, max_length=100)]


class SourceCondition(_OnField):
    field: Literal["source"]
    op: Literal["eq", "ne"]
    value: LeadSource


class SourceInCondition(_OnField):
    field: Literal["source"]
    op: Literal["in"]
    value: Annotated[list[LeadSource], Field(min_length=1, max_length=len(get_args(LeadSource)))]


class ActivityCondition(InputModel):
    """At least ``min_count`` activities on the lead (of ``activity_type``, or any)."""

    type: Literal["activity"]
    activity_type: ActivityType | None = None
    min_count: int = Field(ge=1, le=10_000)


FieldCondition = (
    PresenceCondition | TextCondition | TextInCondition | SourceCondition | SourceInCondition
)
AnyCondition = FieldCondition | ActivityCondition


def _shape(value: Any) -> str | None:
    """Which condition a body is, from its type, field and op, so that a bad one is
    reported against the one shape it meant (not against every member of the union)."""

    def get(name: str) -> Any:
        return value.get(name) if isinstance(value, dict) else getattr(value, name, None)

    if get("type") == "activity":
        return "activity"
    if get("type") != "field":
        return None
    op = get("op")
    if op in _PRESENCE:
        return "presence"
    if get("field") == "source":
        return "source-in" if op == "in" else "source"
    return "text-in" if op == "in" else "text"


# The OpenAPI document lists each shape, so a client (or a contract test) can build
# only valid conditions.
Condition = Annotated[
    Annotated[PresenceCondition, Tag("presence")]
    | Annotated[TextCondition, Tag("text")]
    | Annotated[TextInCondition, Tag("text-in")]
    | Annotated[SourceCondition, Tag("source")]
    | Annotated[SourceInCondition, Tag("source-in")]
    | Annotated[ActivityCondition, Tag("activity")],
    Discriminator(
        _shape,
        custom_error_type="invalid_condition",
        custom_error_message='a condition is {"type": "field", "field", "op", '
        '"value"?} or {"type": "activity", "activity_type"?, "min_count"}',
    ),
]
CONDITION: TypeAdapter[AnyCondition] = TypeAdapter(Condition)


def parse(condition: Mapping[str, Any]) -> AnyCondition:
    """A stored condition (validated when it was written)."""
    return CONDITION.validate_python(condition)


def _text(value: Any) -> str:
    return str(value).casefold() if value is not None else ""


def _field_holds(cond: FieldCondition, lead: Mapping[str, Any]) -> bool:
    value = getattr(cond, "value", None)
    if cond.field in SEALED_FIELDS:
        present = lead.get(f"{cond.field}_enc") is not None
    else:
        present = lead.get(cond.field) not in (None, "")
    if cond.op == "present":
        return present
    if cond.op == "absent":
        return not present
    actual = _text(lead.get(cond.field))
    if isinstance(value, list):  # in
        return present and actual in {v.casefold() for v in value}
    wanted = _text(value)
    if cond.op == "eq":
        return present and actual == wanted
    if cond.op == "ne":
        return actual != wanted
    if cond.op == "contains":
        return present and wanted in actual
    return present and actual.startswith(wanted)  # starts


def _reason(cond: AnyCondition, counts: Mapping[str, int]) -> str:
    if isinstance(cond, ActivityCondition):
        what = f"{cond.activity_type} activities" if cond.activity_type else "activities"
        have = _count(cond, counts)
        return f"{have} {what} (at least {cond.min_count})"
    value = getattr(cond, "value", None)
    if value is None:
        return f"{cond.field} is {cond.op}"
    shown = " | ".join(value) if isinstance(value, list) else value
    return f"{cond.field} {cond.op} {shown}"


def _count(cond: ActivityCondition, counts: Mapping[str, int]) -> int:
    if cond.activity_type is None:
        return sum(counts.values())
    return counts.get(cond.activity_type, 0)


def holds(
    cond: AnyCondition,
    lead: Mapping[str, Any],
    counts: Mapping[str, int],
) -> bool:
    if isinstance(cond, ActivityCondition):
        return _count(cond, counts) >= cond.min_count
    return _field_holds(cond, lead)


def evaluate(
    lead: Mapping[str, Any],
    counts: Mapping[str, int],
    rules: Iterable[Mapping[str, Any]],
) -> tuple[int, list[dict[str, Any]]]:
    """The lead's score and its explanation: the active rules that hold, in name order.

    ``lead`` holds the lead's columns (its sealed fields as ciphertexts or None),
    ``counts`` its activities by type, ``rules`` the tenant's rule rows."""
    score = 0
    details: list[dict[str, Any]] = []
    for rule in sorted(rules, key=lambda r: (str(r["name"]), str(r["id"]))):
        if not rule["active"]:
            continue
        cond = parse(rule["condition"])
        if holds(cond, lead, counts):
            points = int(rule["points"])
            score += points
            details.append(
                {
                    "rule_id": str(rule["id"]),
                    "name": rule["name"],
                    "points": points,
                    "reason": _reason(cond, counts),
                }
            )
    return score, details


def changed(row: Mapping[str, Any], score: int, details: Sequence[Mapping[str, Any]]) -> bool:
    return bool(row.get("score") != score or row.get("score_details") != list(details))


def ids(values: Iterable[Any]) -> list[UUID]:
    return sorted({v if isinstance(v, UUID) else UUID(str(v)) for v in values if v})
