"""Base classes of request/response schemas, and the types that keep validation and the
OpenAPI document saying the same thing (formats, nullability, trimming)."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Generic, Self, TypeVar
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
)

T = TypeVar("T")


# What str.strip() removes, spelled out: regex engines disagree on \s (Python's, the Rust
# one pydantic uses and ECMA's, which OpenAPI patterns follow), these classes do not.
SPACE = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Text that is not blank (an unanchored pattern: it holds one character that stays).
NOT_BLANK = f"[^{SPACE}]"


def padded(pattern: str) -> str:
    """An anchored ``^...$`` pattern that also admits the whitespace trimming removes."""
    return f"^[{SPACE}]*(?:{pattern.removeprefix('^').removesuffix('$')})[{SPACE}]*$"


# A pragmatic address check (email-validator is not a dependency): an RFC 5322
# dot-atom local part and a DNS host name with an alphabetic or punycode TLD, any case
# (stored lower-cased). The pattern is both the check and what the document states.
# Here rather than in a domain: contacts, users and the token endpoint all take emails.
_ATOM = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_PATTERN = (
    rf"^{_ATOM}(\.{_ATOM})*@({_LABEL}\.)+([A-Za-z]{{2,63}}|[Xx][Nn]--[A-Za-z0-9-]{{1,59}})$"
)


def normalise_email(value: str) -> str:
    """Trimmed and lower-cased, the one form stored and filtered on."""
    return value.strip().lower()


Email = Annotated[
    str,
    StringConstraints(max_length=320, pattern=padded(EMAIL_PATTERN)),
    AfterValidator(normalise_email),
]


# An optional leading +, then digits, spaces, dashes or parentheses: 3 to 15 digits
# (E.164 has at most 15; fewer than 3 is never a reachable number).
PHONE_PATTERN = r"^\+?[ ()-]*([0-9][ ()-]*){3,15}$"

Phone = Annotated[str, StringConstraints(max_length=40, pattern=padded(PHONE_PATTERN))]


# A record's id in the client's own system (unique per tenant and kind; what batch
# upserts find records by): 1-255 characters, no control character, no space first or
# last (an id is compared exactly, so it is never trimmed into another one).
_ID_EDGE = f"[^{SPACE}\\x00-\\x1f\\x7f]"
EXTERNAL_ID_PATTERN = f"^{_ID_EDGE}([^\\x00-\\x1f\\x7f]*{_ID_EDGE})?$"
ExternalId = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=EXTERNAL_ID_PATTERN)
]


# A record's custom fields by name; the tenant's definitions say what each takes
# (GET /v1/objects/{object}/schema), and every write is checked against them.
CustomValues = Annotated[
    dict[str, Any],
    Field(
        description="The tenant's own fields by name (see GET /v1/objects/{object}/schema); "
        "in a PATCH, a field set to null is cleared and fields left out are kept.",
        max_length=200,
    ),
]


class InputModel(BaseModel):
    """Request bodies: unknown fields are an error; strings are trimmed once they are
    valid as sent, so lengths and patterns apply to what the client sent (as the
    OpenAPI document states them). Required text says ``NOT_BLANK``; a pattern that
    tolerates surrounding spaces says ``padded(...)``."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _trimmed(self) -> Self:
        for name, value in self.__dict__.items():
            if isinstance(value, str):
                # Not an assignment: the field stays "unset" for PATCH if it was.
                self.__dict__[name] = value.strip()
        return self

    def changes(self) -> dict[str, Any]:
        """The fields the client actually sent (PATCH semantics)."""
        return self.model_dump(exclude_unset=True)


def _not_null(value: T) -> T:
    if value is None:
        raise ValueError("cannot be null")
    return value


def without_null(schema: dict[str, Any]) -> None:
    """Drops the null branch of an optional value's JSON Schema (in place)."""
    branches = schema.pop("anyOf", [])
    kept = [b for b in branches if b.get("type") != "null"]
    if len(kept) == 1:
        schema.update(kept[0])
    elif kept:
        schema["anyOf"] = kept


# A field a PATCH may leave out but not set to null (a required value): refused at
# parsing, and documented as not nullable.
Omittable = Annotated[T | None, AfterValidator(_not_null), Field(json_schema_extra=without_null)]


_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?")


def _iso_text(value: Any) -> Any:
    # Pydantic would also take a number (or a numeric string) as a Unix time.
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or _NUMBER.fullmatch(value.strip()):
        raise ValueError("must be an ISO 8601 date or date-time such as 2026-03-01T09:30:00Z")
    return value


# Dates and times travel as ISO 8601 text (format date / date-time), nothing else.
IsoDate = Annotated[date, BeforeValidator(_iso_text)]
IsoDateTime = Annotated[AwareDatetime, BeforeValidator(_iso_text)]


def _json_number(value: Any) -> Any:
    # JSON 3.0 is the integer 3 (JSON Schema agrees), but true and "3" are not.
    if isinstance(value, bool | str):
        raise ValueError("must be an integer")
    return value


# JSON true and 1 are different values: a boolean or an integer field takes only its own
# type (pydantic would otherwise read 0, "yes" or "3"). For an integer, give bounds
# before this (``Annotated[int, Field(ge=0), json_integer]``), so the document states them.
Flag = StrictBool
json_integer = BeforeValidator(_json_number)


def decimal_text(pattern: str) -> BeforeValidator:
    """For a decimal sent as a JSON number or a string: the string must match
    ``pattern``, the form the OpenAPI document gives (not anything ``Decimal()`` reads,
    such as "1e2" or " 5")."""
    form = re.compile(pattern)

    def check(value: Any) -> Any:
        if isinstance(value, str) and not form.fullmatch(value):
            raise ValueError(f"must be a decimal number matching {pattern}")
        return value

    return BeforeValidator(check)


def any_present(*fields: str) -> dict[str, Any]:
    """JSON Schema saying at least one of ``fields`` is given and not null (for a model
    whose validator requires it: ``ConfigDict(json_schema_extra=any_present(...))``)."""
    return {
        "anyOf": [{"required": [f], "properties": {f: {"not": {"type": "null"}}}} for f in fields]
    }


def one_present(*fields: str) -> dict[str, Any]:
    """JSON Schema saying exactly one of ``fields`` is given and not null."""
    return {
        "oneOf": [
            {
                "required": [f],
                "properties": {
                    f: {"not": {"type": "null"}},
                    **{other: {"type": "null"} for other in fields if other != f},
                },
            }
            for f in fields
        ]
    }


class Addressable(BaseModel):
    """A response body that is one resource with a URL of its own: created (201), it
    comes with a Location (the OpenAPI document says so, meridian.web.openapi)."""


class Versioned(BaseModel):
    """A response body with a version: it comes with an ETag."""


class RecordRead(Addressable, Versioned):
    id: UUID
    created_at: datetime
    updated_at: datetime
    version: int


Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    """Every list: one page of items and the cursor of the next (null on the last)."""

    data: list[Item]
    next_cursor: str | None
