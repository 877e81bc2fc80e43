"""The creation body of a custom field: one schema per type, stating its own options."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from pydantic import TypeAdapter, ValidationError

from meridian.crud.custom import FIELD_TYPES
from meridian.fields.schemas import TYPE_OPTIONS, FieldCreate

CREATE: TypeAdapter[Any] = TypeAdapter(FieldCreate)


def _variants() -> list[Any]:
    union = get_args(FieldCreate)[0]
    return list(get_args(union))


def test_every_type_has_one_creation_body_taking_its_own_options() -> None:
    named = [t for v in _variants() for t in get_args(v.model_fields["type"].annotation)]
    assert sorted(named) == sorted(FIELD_TYPES)
    for variant in _variants():
        options = variant.model_fields["options"].annotation
        for field_type in get_args(variant.model_fields["type"].annotation):
            allowed, needed = TYPE_OPTIONS[field_type]
            assert set(options.model_fields) == allowed, field_type
            required = {n for n, f in options.model_fields.items() if f.is_required()}
            assert required == needed, field_type
            assert variant.model_fields["options"].is_required() is bool(needed), field_type


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"type": "picklist", "options": {"values": ["a"], "scale": 2}}, "extra_forbidden"),
        ({"type": "picklist"}, "missing"),
        ({"type": "currency", "options": {}}, "missing"),
        ({"type": "lookup", "options": {"target": "pipeline"}}, "literal_error"),
        ({"type": "boolean", "unique": True}, "literal_error"),
        ({"type": "date", "options": {"max_length": 3}}, "extra_forbidden"),
        ({"type": "number", "options": {"min": 5, "max": 1}}, "value_error"),
        ({"type": "multi_picklist", "options": {"values": ["a", "a"]}}, "value_error"),
        ({"type": "colour"}, "union_tag_invalid"),
    ],
)
def test_a_body_that_does_not_fit_its_type_is_refused(body: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CREATE.validate_python({"name": "f", "label": "F", **body})
    assert problem in {e["type"] for e in caught.value.errors()}


def test_bodies_that_fit() -> None:
    for body in (
        {"type": "text"},
        {"type": "text", "options": {"max_length": 40}},
        {"type": "decimal", "options": {"scale": 2, "min": 0}},
        {"type": "currency", "options": {"currency": "EUR"}},
        {"type": "url", "unique": True},
        {"type": "picklist", "options": {"values": ["EMEA", "APAC"]}, "default": "EMEA"},
        {"type": "lookup", "options": {"target": "account"}},
    ):
        made = CREATE.validate_python({"name": "f", "label": "F", **body})
        assert made.type == body["type"]
