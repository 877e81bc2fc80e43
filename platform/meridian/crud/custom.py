"""Custom fields: a tenant's own fields on its records, kept as data.

A tenant defines fields per object (``field_definition``: name, type, options,
required, default, unique). A record keeps its values in its ``custom`` JSONB column,
by field name, and returns them with it; the same values, typed, are in
``custom_value`` (one row per field, record and item of a multi-picklist), whose
per-field indexes serve filters (``custom.<name>`` in ``?filter=``) and uniqueness. No
tenant ever gets DDL of its own, so every tenant's tables are the same on PostgreSQL and
on Citus.

``TenantRepository`` calls ``prepare`` before it inserts or updates a record of an
object with custom fields (validation, defaults, required fields, lookups, uniqueness:
every problem a 422 or 409 naming ``custom.<name>``) and ``index`` after, in the same
transaction; ``forget`` when it deletes one. Archiving a field takes its values out of
the records' ``custom`` (they stay in ``custom_value``) and restoring it puts them back:
nothing is lost unless a field is purged, explicitly.

A field marked ``sensitive`` (text, email or date: the personal data a CRM is asked to
keep) is sealed like the built-in personal fields: the record's ``custom`` holds its
ciphertext (``encryption.fields.seal_custom``), its ``custom_value`` row the ciphertext
again (for restoring an archived field), its blind index and the key version. It is
found by equality only, through the blind index (text and emails case-insensitively),
never sorted, unique through the blind index, masked without pii:read, and never in an
event (only that it changed).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from dataclasses import field as dc_field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypedDict, get_args
from uuid import UUID

import asyncpg
import orjson
from pydantic import BaseModel
from sqlalchemy import (
    Boolean,
    ColumnElement,
    Date,
    DateTime,
    Double,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    delete,
    insert,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, Mapped, mapped_column

from meridian.crud import hooks
from meridian.crud.compiled import fetch
from meridian.crud.filters import CustomFields, FilterField, sealed_field
from meridian.crud.hooks import Written
from meridian.crud.model import Record, RecordRow
from meridian.crud.pagination import CustomKey, Sort
from meridian.crud.schemas import EMAIL_PATTERN
from meridian.encryption.fields import (
    custom_column,
    is_sealed,
    open_custom,
    seal_custom,
    sealed_blob,
    search_indexes,
)
from meridian.errors import Duplicate, MeridianError, invalid_field
from tenancy.context import TenantContext
from tenancy.crypto import FieldCipher
from tenancy.keyring import SESSION_KEYRING, TenantKeyring
from tenancy.planes import ShardBase, TenantScoped

FieldType = Literal[
    "text",
    "number",
    "decimal",
    "date",
    "datetime",
    "boolean",
    "picklist",
    "multi_picklist",
    "currency",
    "email",
    "url",
    "lookup",
]
FIELD_TYPES: tuple[str, ...] = get_args(FieldType)
# The objects that take custom fields: the API's plural -> the record kind (its table).
OBJECTS: Mapping[str, str] = {
    "accounts": "account",
    "contacts": "contact",
    "leads": "lead",
    "opportunities": "opportunity",
    "cases": "case",
}
KINDS = frozenset(OBJECTS.values())
NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# A tenant's fields per object: enough for any real CRM, bounded so that a record's
# validation and its index rows stay small.
MAX_FIELDS = 200
MAX_TEXT = 10_000
MAX_ITEMS = 100
_EMAIL = re.compile(EMAIL_PATTERN)
_URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)
_NUMBER_LIMIT = Decimal("1e15")
# What a double holds exactly and compares in the same order as the decimals.
_DIGITS = 15
# The types a field may be sensitive with: personal data is text (an id number, a
# phone), an address or a date (of birth); the others are searched by range, sorted or
# referenced, which a sealed value cannot be.
SENSITIVE_TYPES = frozenset({"text", "email", "date"})


class FieldDefinition(Record, ShardBase):
    __tablename__ = "field_definition"
    __table_args__ = (
        Index("uq_field_definition_name", "tenant_id", "object", "name", unique=True),
        Index("ix_field_definition_created_at", "tenant_id", "created_at", "id"),
    )

    object: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(63))
    label: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))
    required: Mapped[bool] = mapped_column(Boolean, server_default="false")
    is_unique: Mapped[bool] = mapped_column(Boolean, server_default="false")
    default: Mapped[Any] = mapped_column(JSONB, nullable=True)
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    position: Mapped[int] = mapped_column(Integer, server_default="0")
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sensitive: Mapped[bool] = mapped_column(Boolean, server_default="false")


class FieldDefinitionRow(RecordRow):
    object: str
    name: str
    label: str
    description: str | None
    type: str
    required: bool
    is_unique: bool
    default: object | None
    options: dict[str, Any]
    position: int
    archived_at: datetime | None
    sensitive: bool


class CustomValue(TenantScoped, ShardBase):
    """A record's value of one field, typed (a multi-picklist: one row per item)."""

    __tablename__ = "custom_value"
    __table_args__ = (
        Index(
            "ix_custom_value_text_value",
            "tenant_id",
            "field_id",
            "text_value",
            "record_id",
            postgresql_where="text_value IS NOT NULL",
        ),
        Index(
            "ix_custom_value_number_value",
            "tenant_id",
            "field_id",
            "number_value",
            "record_id",
            postgresql_where="number_value IS NOT NULL",
        ),
        Index(
            "ix_custom_value_date_value",
            "tenant_id",
            "field_id",
            "date_value",
            "record_id",
            postgresql_where="date_value IS NOT NULL",
        ),
        Index(
            "ix_custom_value_time_value",
            "tenant_id",
            "field_id",
            "time_value",
            "record_id",
            postgresql_where="time_value IS NOT NULL",
        ),
        Index(
            "ix_custom_value_ref_value",
            "tenant_id",
            "field_id",
            "ref_value",
            "record_id",
            postgresql_where="ref_value IS NOT NULL",
        ),
        Index(
            "ix_custom_value_bidx",
            "tenant_id",
            "field_id",
            "bidx",
            "record_id",
            postgresql_where="bidx IS NOT NULL",
        ),
        Index(
            "ix_custom_value_key_version",
            "tenant_id",
            "key_version",
            "record_id",
            postgresql_where="key_version IS NOT NULL",
        ),
        Index("ix_custom_value_record", "tenant_id", "record_id"),
        Index(
            "uq_custom_value_unique",
            "tenant_id",
            "field_id",
            "unique_value",
            unique=True,
            postgresql_where="unique_value IS NOT NULL",
        ),
    )

    field_id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-10)
    record_id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-9)
    item: Mapped[int] = mapped_column(SmallInteger, primary_key=True, server_default="0")
    text_value: Mapped[str | None] = mapped_column(Text)
    # Numbers, decimals and currencies (at most 15 significant digits, so exact) as
    # double precision, whose comparisons are leakproof: under row-level security only
    # leakproof comparisons can be index conditions (numeric's are not). A decimal's
    # exact text is in text_value too.
    number_value: Mapped[float | None] = mapped_column(Double)
    date_value: Mapped[date | None] = mapped_column(Date)
    time_value: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    bool_value: Mapped[bool | None] = mapped_column(Boolean)
    ref_value: Mapped[UUID | None]
    # The value as uniqueness compares it, for unique fields only.
    unique_value: Mapped[str | None] = mapped_column(Text)
    # A sensitive field's: its ciphertext (base64), blind index and their key version.
    sealed_value: Mapped[str | None] = mapped_column(Text)
    bidx: Mapped[bytes | None] = mapped_column(LargeBinary)
    key_version: Mapped[int | None] = mapped_column(SmallInteger)


class IndexRow(TypedDict, total=False):
    item: int
    text_value: str
    number_value: float
    date_value: date
    time_value: datetime
    bool_value: bool
    ref_value: UUID
    unique_value: str
    sealed_value: str
    bidx: bytes
    key_version: int


@dataclass(frozen=True, slots=True)
class Field:
    """A field as validation and filters use it."""

    id: UUID
    name: str
    type: str
    required: bool
    unique: bool
    default: Any
    options: Mapping[str, Any]
    sensitive: bool = False

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Field:
        return cls(
            row["id"],
            row["name"],
            row["type"],
            row["required"],
            row["is_unique"],
            row["default"],
            row["options"] or {},
            row["sensitive"],
        )

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self.options.get("values", ()))

    def blind(self, value: str) -> str:
        return blind_text(self.type, value)


def blind_text(type_: str, value: str) -> str:
    """A sensitive value as its blind index takes it: text and addresses compare
    case-insensitively (as uniqueness compares text), a date as it is."""
    return value if type_ == "date" else value.strip().casefold()


# -- values -----------------------------------------------------------------------------
class BadValue(ValueError):
    """A value a field does not take (the message says what it takes)."""


def _decimal(value: Any, scale: int | None) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadValue("takes a number (or a decimal string)")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise BadValue("takes a number (or a decimal string)") from exc
    if not number.is_finite() or abs(number) >= _NUMBER_LIMIT:
        raise BadValue("takes a finite number below 10^15 in size")
    if len(number.normalize().as_tuple().digits) > _DIGITS:
        raise BadValue(f"takes at most {_DIGITS} significant digits")
    if scale is not None:
        if number != number.quantize(Decimal(1).scaleb(-scale)):
            raise BadValue(f"takes at most {scale} decimal places")
        number = number.quantize(Decimal(1).scaleb(-scale))
    return number


def _bounded(number: Decimal, options: Mapping[str, Any]) -> Decimal:
    low, high = options.get("min"), options.get("max")
    if low is not None and number < Decimal(str(low)):
        raise BadValue(f"is at least {low}")
    if high is not None and number > Decimal(str(high)):
        raise BadValue(f"is at most {high}")
    return number


def _text(value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise BadValue("takes a string")
    text = value.strip()
    if not text:
        raise BadValue("takes a non-blank string (null clears it)")
    if len(text) > limit:
        raise BadValue(f"takes at most {limit} characters")
    return text


def check_value(spec: Field, value: Any) -> Any:
    """``value`` as ``spec`` stores it (JSON-ready), or ``BadValue`` saying why not."""
    kind, options = spec.type, spec.options
    if kind == "text":
        return _text(value, int(options.get("max_length", MAX_TEXT)))
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadValue("takes an integer")
        return int(_bounded(Decimal(value), options))
    if kind == "decimal":
        number = _bounded(_decimal(value, options.get("scale")), options)
        return format(number, "f")
    if kind == "currency":
        return format(_bounded(_decimal(value, 2), options), "f")
    if kind == "date":
        try:
            return date.fromisoformat(_text(value, 10)).isoformat()
        except ValueError as exc:
            raise BadValue("takes a date (YYYY-MM-DD)") from exc
    if kind == "datetime":
        try:
            moment = datetime.fromisoformat(_text(value, 40))
        except ValueError as exc:
            raise BadValue("takes a date and time with a time zone (ISO 8601)") from exc
        if moment.tzinfo is None:
            raise BadValue("takes a date and time with a time zone (ISO 8601)")
        return moment.isoformat()
    if kind == "boolean":
        if not isinstance(value, bool):
            raise BadValue("takes true or false")
        return value
    if kind == "picklist":
        if value not in spec.choices:
            raise BadValue(f"takes one of {', '.join(spec.choices)}")
        return value
    if kind == "multi_picklist":
        if not isinstance(value, list) or len(value) > MAX_ITEMS:
            raise BadValue("takes a list of its values")
        unknown = [v for v in value if v not in spec.choices]
        if unknown:
            raise BadValue(f"takes values among {', '.join(spec.choices)}, not {unknown[0]!r}")
        # One order (the field's) and no repeats, whatever the client sent.
        return [c for c in spec.choices if c in value]
    if kind == "email":
        text = _text(value, 320).lower()
        if not _EMAIL.match(text):
            raise BadValue("takes an email address")
        return text
    if kind == "url":
        text = _text(value, 2048)
        if not _URL.match(text):
            raise BadValue("takes an http or https URL")
        return text
    if kind == "lookup":
        try:
            return str(UUID(_text(value, 36)))
        except ValueError as exc:
            raise BadValue(f"takes the id of a {options.get('target')}") from exc
    raise BadValue(f"has an unknown type {kind}")  # pragma: no cover - checked on definition


def index_rows(spec: Field, value: Any) -> list[IndexRow]:
    """The typed rows of a stored value (one per item of a multi-picklist)."""
    kind = spec.type
    rows: list[IndexRow]
    if kind in ("text", "picklist", "email", "url"):
        rows = [{"text_value": value}]
    elif kind == "multi_picklist":
        rows = [{"item": i, "text_value": v} for i, v in enumerate(value)]
    elif kind == "number":
        rows = [{"number_value": float(value)}]
    elif kind in ("decimal", "currency"):
        rows = [{"number_value": float(Decimal(value)), "text_value": value}]
    elif kind == "date":
        rows = [{"date_value": date.fromisoformat(value)}]
    elif kind == "datetime":
        rows = [{"time_value": datetime.fromisoformat(value)}]
    elif kind == "boolean":
        rows = [{"bool_value": value}]
    else:  # lookup
        rows = [{"ref_value": UUID(value)}]
    if spec.unique and kind != "multi_picklist":
        rows[0]["unique_value"] = str(value).casefold() if kind == "text" else str(value)
    return rows


# -- definitions ----------------------------------------------------------------------
# The definitions a transaction has read, per (tenant, kind), in its session: a batch or
# an import's chunk writes hundreds of records of one kind, and each would read the same
# definitions again. A definition written in the transaction forgets them (below).
_READ = "meridian.custom.fields"
_d = FieldDefinition
_FIELD_COLUMNS = (
    _d.id,
    _d.name,
    _d.type,
    _d.required,
    _d.is_unique,
    _d.default,
    _d.options,
    _d.sensitive,
)


async def fields_of(session: AsyncSession, tenant_id: UUID, kind: str) -> list[Field]:
    """The active fields of the tenant's ``kind`` records, in their order."""
    read: dict[tuple[UUID, str], list[Field]] = session.info.setdefault(_READ, {})
    found = read.get((tenant_id, kind))
    if found is None:
        d = FieldDefinition
        stmt = (
            select(*_FIELD_COLUMNS)
            .where(d.tenant_id == tenant_id, d.object == kind, d.archived_at.is_(None))
            .order_by(d.position, d.name)
        )
        found = [Field.of(dict(r)) for r in (await session.execute(stmt)).mappings()]
        read[(tenant_id, kind)] = found
    return list(found)


async def _definition_written(session: AsyncSession, _: TenantContext, written: Written) -> None:
    if written.kind == FieldDefinition.__tablename__:
        session.info.pop(_READ, None)


hooks.on_write("custom.definitions", _definition_written)


async def fields_read(conn: asyncpg.Connection, tenant_id: UUID, kind: str) -> list[Field]:
    """``fields_of`` on the raw read path (lists, documents)."""
    d = FieldDefinition
    stmt = (
        select(*_FIELD_COLUMNS)
        .where(d.tenant_id == tenant_id, d.object == kind, d.archived_at.is_(None))
        .order_by(d.position, d.name)
    )
    rows = [_decoded(r) for r in await fetch(conn, stmt)]
    return [Field.of(r) for r in rows]


async def labels_read(conn: asyncpg.Connection, tenant_id: UUID, kind: str) -> dict[str, str]:
    d = FieldDefinition
    stmt = select(d.name, d.label).where(
        d.tenant_id == tenant_id, d.object == kind, d.archived_at.is_(None)
    )
    return {r["name"]: r["label"] for r in await fetch(conn, stmt)}


def _decoded(record: Mapping[str, Any]) -> dict[str, Any]:
    # The raw pools have no JSON codec.
    row = dict(record)
    for key in ("default", "options"):
        if isinstance(row.get(key), str):
            row[key] = orjson.loads(row[key])
    return row


# -- a record's values ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Prepared:
    """What ``prepare`` decided: the record's new ``custom`` and which fields changed
    (a sensitive field's index row is made with its plaintext, which ``custom`` no
    longer holds)."""

    custom: dict[str, Any]
    fields: Sequence[Field]
    changed: frozenset[str]
    sealed: Mapping[str, IndexRow] = dc_field(default_factory=dict)


class _Sealer:
    """The sealing of one record's sensitive values: under the tenant's active key, the
    record's id and the field's name bound to each ciphertext."""

    def __init__(
        self, keyring: TenantKeyring, tenant_id: UUID, table: str, record_id: UUID
    ) -> None:
        self.keyring, self.tenant_id = keyring, tenant_id
        self.table, self.record_id = table, record_id
        self._cipher: FieldCipher | None = None

    @classmethod
    def of(cls, session: AsyncSession, tenant_id: UUID, table: str, record_id: UUID) -> _Sealer:
        keyring = session.info.get(SESSION_KEYRING)
        if not isinstance(keyring, TenantKeyring):
            # Fail closed: a sensitive value is never stored in clear.
            raise RuntimeError("a sensitive custom field is written without the keyring")
        return cls(keyring, tenant_id, table, record_id)

    async def open(self, name: str, value: Any) -> Any:
        return await open_custom(
            self.keyring, self.tenant_id, self.table, self.record_id, name, value
        )

    async def given(self, spec: Field, value: Any) -> Any:
        """A sealed value a write sends back (an undo restores the record's own
        ciphertext): its plaintext, if it is this very record's field's."""
        try:
            sealed_blob(value)
            return await self.open(spec.name, value)
        except (ValueError, MeridianError) as exc:
            raise invalid_field(
                f"custom.{spec.name}",
                f"{spec.type} field takes its value (a sealed one only as this record's "
                "own field holds it)",
            ) from exc

    async def seal(self, spec: Field, value: Any) -> tuple[dict[str, str], IndexRow]:
        if self._cipher is None:
            self._cipher = await self.keyring.active_cipher(self.tenant_id)
        cipher = self._cipher
        sealed = seal_custom(cipher, self.table, self.record_id, spec.name, value)
        bidx = cipher.blind_index(self.table, custom_column(spec.name), spec.blind(str(value)))
        row: IndexRow = {
            "sealed_value": sealed["sealed"],
            "bidx": bidx,
            "key_version": cipher.version,
        }
        if spec.unique:
            row["unique_value"] = bidx.hex()
        return sealed, row

    async def indexes(self, spec: Field, value: Any) -> list[bytes]:
        """The value's blind indexes under every live key version."""
        return await search_indexes(
            self.keyring,
            self.tenant_id,
            self.table,
            custom_column(spec.name),
            spec.blind(str(value)),
            normalized=True,
        )


async def prepare(
    session: AsyncSession,
    tenant_id: UUID,
    kind: str,
    record_id: UUID,
    given: Mapping[str, Any] | None,
    current: Mapping[str, Any] | None,
) -> Prepared:
    """The record's ``custom`` after a creation (``current`` None: defaults and required
    fields apply) or an update (``given`` is a patch: a name set to null clears it)."""
    fields = await fields_of(session, tenant_id, kind)
    by_name = {f.name: f for f in fields}
    given = dict(given or {})
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        known = ", ".join(by_name) or "none defined"
        raise invalid_field(
            f"custom.{unknown[0]}", f"no such field on a {kind}; its fields: {known}"
        )
    result = dict(current or {})
    changed: set[str] = set()
    sealer: _Sealer | None = None
    plain: dict[str, Any] = {}
    sealed: dict[str, IndexRow] = {}
    for name, value in given.items():
        spec = by_name[name]
        if value is None:
            if spec.required:
                raise invalid_field(f"custom.{name}", "is required and cannot be cleared")
            if name in result:
                del result[name]
                changed.add(name)
            continue
        if spec.sensitive:
            sealer = sealer or _Sealer.of(session, tenant_id, kind, record_id)
            if is_sealed(value):
                value = await sealer.given(spec, value)
        try:
            stored = check_value(spec, value)
        except BadValue as exc:
            raise invalid_field(f"custom.{name}", f"{spec.type} field {exc}") from exc
        if spec.sensitive:
            assert sealer is not None
            was = result.get(name)
            if was is not None and await sealer.open(name, was) == stored:
                continue  # the same value: its ciphertext stays (no change, no event)
            result[name], sealed[name] = await sealer.seal(spec, stored)
            plain[name] = stored
            changed.add(name)
        elif result.get(name) != stored:
            result[name] = stored
            changed.add(name)
    if current is None:
        for spec in fields:
            if spec.name not in result and spec.default is not None:
                result[spec.name] = spec.default
                changed.add(spec.name)
            if spec.required and spec.name not in result:
                raise invalid_field(f"custom.{spec.name}", "is required", "missing")
    for name in sorted(changed):
        spec, value = by_name[name], plain.get(name, result.get(name))
        if value is None:
            continue
        if spec.type == "lookup":
            await _require_record(session, tenant_id, spec, UUID(value))
        if spec.unique:
            await _require_unique(session, tenant_id, spec, record_id, value, sealer)
    return Prepared(result, fields, frozenset(changed), sealed)


async def _require_record(
    session: AsyncSession, tenant_id: UUID, spec: Field, record_id: UUID
) -> None:
    target = str(spec.options.get("target"))
    table = ShardBase.metadata.tables[target]
    stmt = (
        select(table.c.id)
        .where(table.c.tenant_id == tenant_id, table.c.id == record_id)
        .with_for_update(read=True, key_share=True)
    )
    if await session.scalar(stmt) is None:
        raise invalid_field(f"custom.{spec.name}", f"no {target} with id {record_id}", "not_found")


async def _require_unique(
    session: AsyncSession,
    tenant_id: UUID,
    spec: Field,
    record_id: UUID,
    value: Any,
    sealer: _Sealer | None,
) -> None:
    v = CustomValue
    if spec.sensitive:
        # Through the blind index under every live key version: during a rotation the
        # holder's value may still be under the previous one.
        assert sealer is not None
        same: ColumnElement[bool] = v.bidx.in_(await sealer.indexes(spec, value))
    else:
        same = v.unique_value == index_rows(spec, value)[0].get("unique_value")
    stmt = select(v.record_id).where(
        v.tenant_id == tenant_id, v.field_id == spec.id, same, v.record_id != record_id
    )
    other = await session.scalar(stmt)
    if other is not None:
        # The unique index is the guarantee; this check names the record to the client.
        raise Duplicate(
            f"custom.{spec.name}: another record has this value (the field is unique).",
            duplicate_of=str(other),
        )


async def index(
    session: AsyncSession, tenant_id: UUID, record_id: UUID, prepared: Prepared
) -> None:
    """``custom_value`` rows of the fields ``prepared`` changed, as they are now."""
    if not prepared.changed:
        return
    fields = [f for f in prepared.fields if f.name in prepared.changed]
    v = CustomValue
    await session.execute(
        delete(v).where(
            v.tenant_id == tenant_id,
            v.record_id == record_id,
            v.field_id.in_([f.id for f in fields]),
        )
    )
    rows = [
        {"tenant_id": tenant_id, "field_id": f.id, "record_id": record_id, "item": 0, **row}
        for f in fields
        if prepared.custom.get(f.name) is not None
        for row in (
            [prepared.sealed[f.name]] if f.sensitive else index_rows(f, prepared.custom[f.name])
        )
    ]
    if rows:
        await session.execute(insert(v), rows)


async def forget(session: AsyncSession, tenant_id: UUID, record_id: UUID) -> None:
    """A deleted record's values (the record's own ``custom`` went with its row)."""
    v = CustomValue
    await session.execute(delete(v).where(v.tenant_id == tenant_id, v.record_id == record_id))


# -- filters --------------------------------------------------------------------------------
_FILTER_KINDS: Mapping[str, tuple[str, str]] = {
    "text": ("text", "text_value"),
    "email": ("text", "text_value"),
    "url": ("text", "text_value"),
    "picklist": ("enum", "text_value"),
    "multi_picklist": ("enum", "text_value"),
    "number": ("decimal", "number_value"),
    "decimal": ("decimal", "number_value"),
    "currency": ("decimal", "number_value"),
    "date": ("date", "date_value"),
    "datetime": ("datetime", "time_value"),
    "boolean": ("bool", "bool_value"),
    "lookup": ("uuid", "ref_value"),
}


def filter_fields(
    fields: Sequence[Field], tenant_id: UUID, record_id: InstrumentedAttribute[Any]
) -> CustomFields:
    """The resolver of ``custom.<name>`` in a list's ``?filter=``: each field's values
    compared in ``custom_value`` through its per-field index, the records they belong to
    matched by id (``record_id``: the listed table's id column)."""
    by_name = {f.name: f for f in fields}
    v = CustomValue

    def resolve(name: str) -> FilterField | None:
        spec = by_name.get(name)
        if spec is None:
            return None
        kind, column = _FILTER_KINDS[spec.type]
        field_id = spec.id

        def within(predicate: ColumnElement[bool]) -> ColumnElement[bool]:
            values = select(v.record_id).where(
                v.tenant_id == tenant_id, v.field_id == field_id, predicate
            )
            return record_id.in_(values)

        if spec.sensitive:
            # Found by equality through its blind index (``endpoints.criteria``).
            return replace(
                sealed_field(int(spec.options.get("max_length", MAX_TEXT))),
                normalize=spec.blind,
                within=within,
            )

        ops: tuple[str, ...] = ()
        if spec.type == "multi_picklist":
            # A multi-picklist matches a value it holds (eq, in) or does not (ne, nin).
            ops = ("eq", "ne", "in", "nin", "null")
        return FilterField(
            getattr(v, column),
            kind,  # type: ignore[arg-type]
            ops=ops,
            choices=spec.choices if kind == "enum" else (),
            normalize=str.lower if spec.type == "email" else None,
            within=within,
        )

    return resolve


# -- sorting ----------------------------------------------------------------------------
_SORT_KEYS: Mapping[str, tuple[str, Callable[[Any], Any]]] = {
    "text": ("text_value", str),
    "email": ("text_value", str),
    "url": ("text_value", str),
    "picklist": ("text_value", str),
    "number": ("number_value", lambda v: float(v)),
    "decimal": ("number_value", lambda v: float(Decimal(str(v)))),
    "currency": ("number_value", lambda v: float(Decimal(str(v)))),
    "date": ("date_value", date.fromisoformat),
    "datetime": ("time_value", datetime.fromisoformat),
    "boolean": ("bool_value", bool),
    "lookup": ("ref_value", lambda v: UUID(str(v))),
}


def sort_by(fields: Sequence[Field], name: str, descending: bool) -> Sort | None:
    """The sort by the custom field ``name`` (None: no such field, or one that does not
    sort: a multi-picklist holds several values)."""
    spec = next((f for f in fields if f.name == name), None)
    if spec is None or spec.type not in _SORT_KEYS or spec.sensitive:
        return None
    column, convert = _SORT_KEYS[spec.type]
    key = CustomKey(spec.id, spec.name, convert)
    return Sort(f"custom.{name}", getattr(CustomValue, column), descending, custom=key)


# -- documents ---------------------------------------------------------------------------
def value_schema(spec: Field) -> dict[str, Any]:
    """The JSON Schema of one field's values."""
    kind, options = spec.type, spec.options
    schema: dict[str, Any]
    if kind == "text":
        schema = {"type": "string", "maxLength": int(options.get("max_length", MAX_TEXT))}
    elif kind == "number":
        schema = {"type": "integer"}
    elif kind in ("decimal", "currency"):
        schema = {"type": ["number", "string"], "format": "decimal"}
        if kind == "currency":
            schema["x-currency"] = options.get("currency")
    elif kind == "date":
        schema = {"type": "string", "format": "date"}
    elif kind == "datetime":
        schema = {"type": "string", "format": "date-time"}
    elif kind == "boolean":
        schema = {"type": "boolean"}
    elif kind == "picklist":
        schema = {"type": "string", "enum": list(spec.choices)}
    elif kind == "multi_picklist":
        schema = {"type": "array", "items": {"type": "string", "enum": list(spec.choices)}}
    elif kind == "email":
        schema = {"type": "string", "format": "email"}
    elif kind == "url":
        schema = {"type": "string", "format": "uri"}
    else:
        schema = {"type": "string", "format": "uuid", "x-lookup": options.get("target")}
    for key in ("min", "max"):
        if key in options and kind in ("number", "decimal", "currency"):
            schema["minimum" if key == "min" else "maximum"] = options[key]
    if spec.default is not None:
        schema["default"] = spec.default
    if spec.unique:
        schema["x-unique"] = True
    if spec.sensitive:
        schema["x-sensitive"] = True
    return schema


# Each object's representation, registered by its domain (the kit knows no domain).
READ_MODELS: dict[str, type[BaseModel]] = {}


def register_read_model(kind: str, model: type[BaseModel]) -> None:
    READ_MODELS[kind] = model


def object_schema(kind: str, fields: Sequence[Field], labels: Mapping[str, str]) -> dict[str, Any]:
    """The tenant's JSON Schema of a ``kind`` record: its built-in fields, and under
    ``custom`` the tenant's own (required ones listed as such)."""
    base = READ_MODELS[kind].model_json_schema(mode="serialization")
    custom = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            f.name: {"title": labels.get(f.name, f.name), **value_schema(f)} for f in fields
        },
        "required": [f.name for f in fields if f.required],
    }
    properties = {**base.get("properties", {}), "custom": custom}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **base,
        "properties": properties,
    }
