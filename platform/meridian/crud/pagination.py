"""Keyset (cursor) pagination over ``(sort column, id)``.

A cursor names the sort and a digest of the filters it was issued for, so it cannot be
replayed against another query; keyset order visits every row exactly once even while
rows are inserted or deleted between pages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import BigInteger, ColumnElement, tuple_
from sqlalchemy.orm import InstrumentedAttribute

from meridian.errors import BadRequest, InvalidCursor

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


@dataclass(frozen=True, slots=True)
class CustomKey:
    """A sort by a custom field (``meridian.crud.custom``): its id, its name in a
    record's ``custom``, and how a stored (JSON) value becomes the typed sort key."""

    field_id: UUID
    field: str
    convert: Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Sort:
    name: str
    column: InstrumentedAttribute[Any]
    descending: bool
    # A custom field's: ``column`` is then custom_value's typed column.
    custom: CustomKey | None = None

    @property
    def token(self) -> str:
        return ("-" if self.descending else "") + self.name

    def value_of(self, row: Mapping[str, Any]) -> Any:
        """The sort key of a row (None: a record without a value of a custom field)."""
        if self.custom is None:
            return row[self.name]
        value = (row.get("custom") or {}).get(self.custom.field)
        return None if value is None else self.custom.convert(value)


def parse_sort(
    raw: str | None, allowed: Mapping[str, InstrumentedAttribute[Any]], default: str
) -> Sort:
    # Only an absent sort means the default: "?sort=" names no field.
    value = default if raw is None else raw
    descending = value.startswith("-")
    name = value[1:] if descending else value
    column = allowed.get(name)
    if column is None:
        options = ", ".join(sorted(allowed))
        raise BadRequest(
            f"Cannot sort by {name!r}; sortable fields: {options} (prefix - for descending)."
        )
    return Sort(name, column, descending)


def _encode_value(value: Any) -> list[Any]:
    if isinstance(value, datetime):
        return ["dt", value.isoformat()]
    if isinstance(value, date):
        return ["d", value.isoformat()]
    if isinstance(value, Decimal):
        return ["dec", format(value, "f")]
    if isinstance(value, UUID):
        return ["u", str(value)]
    return ["v", value]


def _decode_value(tagged: Any) -> Any:
    tag, raw = tagged
    if tag == "dt":
        return datetime.fromisoformat(raw)
    if tag == "d":
        return date.fromisoformat(raw)
    if tag == "dec":
        return Decimal(raw)
    if tag == "u":
        return UUID(raw)
    if tag == "v" and (raw is None or isinstance(raw, str | int | float | bool)):
        # None: only a custom field's sort takes it (its records without a value).
        return raw
    raise ValueError("bad cursor value")


def _fits(sort: Sort, value: Any) -> bool:
    """Whether a decoded cursor value has the sort column's type.

    A tampered cursor (right sort and digest, value of another type) would otherwise
    reach PostgreSQL as e.g. ``timestamptz > varchar`` and fail as a 500.
    """
    if value is None and sort.custom is not None:
        return True  # past the records with a value: those without, in id order
    try:
        expected: type[Any] = sort.column.type.python_type
    except NotImplementedError:
        return True
    if expected is str:
        # PostgreSQL text cannot hold NUL; it would fail as a database error.
        return isinstance(value, str) and "\x00" not in value
    if expected is date:
        return type(value) is date
    if expected is int:
        bits = 63 if isinstance(sort.column.type, BigInteger) else 31
        return type(value) is int and -(2**bits) <= value < 2**bits
    return isinstance(value, expected)


def filters_digest(tenant_id: UUID, filters: Mapping[str, Any]) -> str:
    """What a cursor is bound to besides its sort: the tenant and the filters. Another
    tenant's cursor would only position a keyset scan of the caller's own rows, but a
    token issued to one tenant is refused everywhere else all the same."""
    canonical = orjson.dumps(
        {"tenant": str(tenant_id), **{k: str(v) for k, v in filters.items() if v is not None}},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canonical).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Cursor:
    sort: str
    value: Any
    id: UUID
    digest: str

    def encode(self) -> str:
        raw = orjson.dumps([self.sort, _encode_value(self.value), str(self.id), self.digest])
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, token: str, *, sort: Sort, digest: str) -> Cursor:
        try:
            padded = token + "=" * (-len(token) % 4)
            s, tagged, id_, dig = orjson.loads(base64.urlsafe_b64decode(padded))
            cursor = cls(str(s), _decode_value(tagged), UUID(id_), str(dig))
        except (
            ValueError,
            TypeError,
            binascii.Error,
            InvalidOperation,
            orjson.JSONDecodeError,
        ) as exc:
            raise InvalidCursor("The cursor is malformed.") from exc
        if cursor.sort != sort.token or cursor.digest != digest:
            raise InvalidCursor("The cursor was issued for a different sort or filter.")
        if not _fits(sort, cursor.value):
            raise InvalidCursor("The cursor is malformed.")
        return cursor


def after(sort: Sort, id_column: InstrumentedAttribute[Any], cursor: Cursor) -> ColumnElement[bool]:
    """The keyset predicate: rows strictly after the cursor in ``(sort, id)`` order."""
    left = tuple_(sort.column, id_column)
    right = tuple_(cursor.value, cursor.id)
    return left < right if sort.descending else left > right


def order_by(sort: Sort, id_column: InstrumentedAttribute[Any]) -> list[Any]:
    if sort.descending:
        return [sort.column.desc(), id_column.desc()]
    return [sort.column.asc(), id_column.asc()]


def check_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}.")
    return limit
