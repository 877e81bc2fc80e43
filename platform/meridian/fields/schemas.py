"""Custom field definitions: request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from meridian.crud.custom import MAX_TEXT, FieldType
from meridian.crud.schemas import NOT_BLANK, Flag, InputModel, Omittable, RecordRead, json_integer

FieldName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
Label = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=NOT_BLANK)]
Choice = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=NOT_BLANK)]
Target = Literal["account", "contact", "lead", "opportunity", "case"]
# A picklist's values are distinct (checked by the validators; stated for clients).
EACH_ONCE = {"uniqueItems": True}
ObjectName = Literal["accounts", "contacts", "leads", "opportunities", "cases"]


class FieldOptions(InputModel):
    """What a type takes: ``values`` (picklists), ``max_length`` (text), ``min``/``max``
    (numbers), ``scale`` (decimal places of a decimal), ``currency`` (a currency field's
    ISO 4217 code), ``target`` (the object a lookup points to). A creation states the
    options of its type only (its body's schema per ``type``); a change is checked
    against the field's type (422, ``errors[].type`` ``field_type``)."""

    values: (
        Annotated[list[Choice], Field(min_length=1, max_length=500, json_schema_extra=EACH_ONCE)]
        | None
    ) = None
    max_length: Annotated[int, Field(ge=1, le=MAX_TEXT), json_integer] | None = None
    min: float | None = None
    max: float | None = None
    scale: Annotated[int, Field(ge=0, le=8), json_integer] | None = None
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] | None = None
    target: Target | None = None

    @model_validator(mode="after")
    def _distinct(self) -> FieldOptions:
        if self.values is not None and len(set(self.values)) != len(self.values):
            raise ValueError("values: each value once")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is above max")
        return self


# Which options each type takes (and needs).
TYPE_OPTIONS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "text": (frozenset({"max_length"}), frozenset()),
    "number": (frozenset({"min", "max"}), frozenset()),
    "decimal": (frozenset({"min", "max", "scale"}), frozenset()),
    "currency": (frozenset({"min", "max", "currency"}), frozenset({"currency"})),
    "date": (frozenset(), frozenset()),
    "datetime": (frozenset(), frozenset()),
    "boolean": (frozenset(), frozenset()),
    "picklist": (frozenset({"values"}), frozenset({"values"})),
    "multi_picklist": (frozenset({"values"}), frozenset({"values"})),
    "email": (frozenset(), frozenset()),
    "url": (frozenset(), frozenset()),
    "lookup": (frozenset({"target"}), frozenset({"target"})),
}


# The options of each type, for a creation: exactly what the type takes, the needed
# ones required (a change is checked against the stored type instead).
class NoOptions(InputModel):
    """Date, datetime, boolean, email and URL fields take no options."""


class TextOptions(InputModel):
    max_length: Annotated[int, Field(ge=1, le=MAX_TEXT), json_integer] | None = None


class NumberOptions(InputModel):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> NumberOptions:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is above max")
        return self


class DecimalOptions(NumberOptions):
    scale: Annotated[int, Field(ge=0, le=8), json_integer] | None = None


class CurrencyOptions(NumberOptions):
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]


class PicklistOptions(InputModel):
    values: Annotated[
        list[Choice], Field(min_length=1, max_length=500, json_schema_extra=EACH_ONCE)
    ]

    @model_validator(mode="after")
    def _distinct(self) -> PicklistOptions:
        if len(set(self.values)) != len(self.values):
            raise ValueError("values: each value once")
        return self


class LookupOptions(InputModel):
    target: Target


class _FieldCreate(InputModel):
    name: FieldName
    label: Label
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    required: Flag = False
    unique: Flag = False
    sensitive: Annotated[
        Flag,
        Field(
            description="Encrypt the values with the tenant's data key (text, email and "
            "date fields; 422 `field_definition` for other types): found by equality "
            "only, never sorted, masked without pii:read, never in events. It never "
            "changes once the field exists, and such a field has no default."
        ),
    ] = False
    default: Annotated[
        Any,
        Field(
            description="Given to new records that do not send the field: a value of the "
            "field (its type, within its options; 422 `field_definition` otherwise)."
        ),
    ] = None
    position: Annotated[int, Field(ge=0, le=10_000), json_integer] = 0


class TextFieldCreate(_FieldCreate):
    type: Literal["text"]
    options: TextOptions = Field(default_factory=TextOptions)


class NumberFieldCreate(_FieldCreate):
    type: Literal["number"]
    options: NumberOptions = Field(default_factory=NumberOptions)


class DecimalFieldCreate(_FieldCreate):
    type: Literal["decimal"]
    options: DecimalOptions = Field(default_factory=DecimalOptions)


class CurrencyFieldCreate(_FieldCreate):
    type: Literal["currency"]
    options: CurrencyOptions


class PlainFieldCreate(_FieldCreate):
    type: Literal["date", "datetime", "email", "url"]
    options: NoOptions = Field(default_factory=NoOptions)


class BooleanFieldCreate(_FieldCreate):
    type: Literal["boolean"]
    # One of two values is never unique.
    unique: Literal[False] = False
    options: NoOptions = Field(default_factory=NoOptions)


class PicklistFieldCreate(_FieldCreate):
    type: Literal["picklist"]
    options: PicklistOptions


class MultiPicklistFieldCreate(_FieldCreate):
    type: Literal["multi_picklist"]
    # A list of values is never one value.
    unique: Literal[False] = False
    options: PicklistOptions


class LookupFieldCreate(_FieldCreate):
    type: Literal["lookup"]
    options: LookupOptions


FieldCreate = Annotated[
    TextFieldCreate
    | NumberFieldCreate
    | DecimalFieldCreate
    | CurrencyFieldCreate
    | PlainFieldCreate
    | BooleanFieldCreate
    | PicklistFieldCreate
    | MultiPicklistFieldCreate
    | LookupFieldCreate,
    Field(
        discriminator="type",
        description="A field of one of twelve types; `options` are the type's own.",
        json_schema_extra={
            "examples": [
                {
                    "name": "region",
                    "label": "Region",
                    "type": "picklist",
                    "options": {"values": ["EMEA", "Americas", "APAC"]},
                }
            ]
        },
    ),
]


class FieldUpdate(InputModel):
    """The name, the type and uniqueness are the field's for good (data depends on
    them); everything else can change."""

    label: Omittable[Label] = None
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    required: Omittable[Flag] = None
    default: Any = None
    # Picklist values can be added and reordered; one still held by a record cannot
    # be removed (409 with how many hold it).
    options: Omittable[FieldOptions] = None
    position: Omittable[Annotated[int, Field(ge=0, le=10_000), json_integer]] = None


class FieldRead(RecordRead):
    object: str
    name: str
    label: str
    description: str | None
    type: FieldType
    required: bool
    is_unique: bool
    default: Any
    options: dict[str, Any]
    position: int
    archived_at: datetime | None
    sensitive: bool


class ObjectSchema(BaseModel):
    """A JSON Schema (2020-12) of one object as the tenant has it."""

    model_config = ConfigDict(populate_by_name=True)

    schema_: str = Field(alias="$schema")
    title: str
    type: Literal["object"]
    properties: dict[str, Any]
    required: list[str]
    defs: dict[str, Any] | None = Field(default=None, alias="$defs")
