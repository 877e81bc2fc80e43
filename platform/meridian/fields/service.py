"""Custom field rules: at most ``MAX_FIELDS`` per object; a name is the field's for good
(archived fields keep theirs); options fit the type; a default is a valid value; the
type and uniqueness never change (the stored values depend on them); a picklist value
that records hold cannot be removed; archiving takes the values out of the records and
keeps them, restoring puts them back, and only purging an archived field deletes them."""

from __future__ import annotations

from typing import Any, get_args
from uuid import UUID

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from meridian.crud import hooks
from meridian.crud.custom import MAX_FIELDS, SENSITIVE_TYPES, BadValue, Field, check_value
from meridian.crud.custom import FieldDefinitionRow as Row
from meridian.crud.repository import TenantRepository, VersionMismatch
from meridian.errors import FIELD_DEFINITION, Conflict, invalid_field
from meridian.fields.repository import FieldRepository
from meridian.fields.schemas import TYPE_OPTIONS, FieldCreate, FieldUpdate, Target
from meridian.ids import new_id
from tenancy.context import TenantContext


def _options(options: BaseModel) -> dict[str, Any]:
    return options.model_dump(exclude_none=True)


def _checked_default(field: Field, value: Any) -> Any:
    """The default as stored: a value of the field (its type and options)."""
    if value is None:
        return None
    try:
        return check_value(field, value)
    except BadValue as exc:
        raise invalid_field("default", f"{field.type} field {exc}", FIELD_DEFINITION) from exc


class FieldService:
    async def create(
        self, session: AsyncSession, tenant: TenantContext, kind: str, body: FieldCreate
    ) -> Row:
        repo = FieldRepository(session, tenant)
        if await repo.named(kind, body.name) is not None:
            raise Conflict(
                f"A {kind} field named {body.name!r} exists (archived fields keep their "
                "names: restore it, or choose another name)."
            )
        if await repo.count(kind) >= MAX_FIELDS:
            raise Conflict(f"A {kind} has at most {MAX_FIELDS} custom fields.")
        if body.unique and body.default is not None:
            raise invalid_field(
                "default",
                "a unique field has no default (every record would share it)",
                FIELD_DEFINITION,
            )
        if body.sensitive and body.type not in SENSITIVE_TYPES:
            raise invalid_field(
                "sensitive",
                f"a {body.type} field cannot be sensitive; sensitive fields are "
                f"{', '.join(sorted(SENSITIVE_TYPES))}",
                FIELD_DEFINITION,
            )
        if body.sensitive and body.default is not None:
            raise invalid_field(
                "default",
                "a sensitive field has no default (it would be kept in clear)",
                FIELD_DEFINITION,
            )
        row_id = new_id()
        options = _options(body.options)
        spec = Field(
            row_id, body.name, body.type, body.required, body.unique, None, options, body.sensitive
        )
        return await repo.insert(
            {
                "id": row_id,
                "object": kind,
                "name": body.name,
                "label": body.label,
                "description": body.description,
                "type": body.type,
                "required": body.required,
                "is_unique": body.unique,
                "default": _checked_default(spec, body.default),
                "options": options,
                "position": body.position,
                "sensitive": body.sensitive,
            }
        )

    async def update(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        kind: str,
        field_id: UUID,
        body: FieldUpdate,
        expected_version: int | None,
    ) -> Row | None:
        repo = FieldRepository(session, tenant)
        current = await repo.locked(kind, field_id)
        if current is None:
            return None
        if expected_version is not None and current["version"] != expected_version:
            raise VersionMismatch
        values = body.changes()
        options = current["options"]
        if body.options is not None:
            options = _options(body.options)
            allowed, needed = TYPE_OPTIONS[current["type"]]
            given = set(options)
            if given - allowed or needed - given:
                raise invalid_field(
                    "options",
                    f"a {current['type']} field takes {', '.join(sorted(allowed)) or 'none'}"
                    + (f" and needs {', '.join(sorted(needed))}" if needed else ""),
                    FIELD_DEFINITION,
                )
            gone = sorted(
                set(current["options"].get("values", ())) - set(options.get("values", ()))
            )
            if gone and (held := await repo.holding(field_id, gone)):
                raise Conflict(
                    f"{held} record(s) hold {', '.join(map(repr, gone))}: change them first; "
                    "a value records hold is never removed silently."
                )
            values["options"] = options
        if "default" in body.model_fields_set:
            spec = Field.of({**current, "options": options})
            if current["is_unique"] and body.default is not None:
                raise invalid_field("default", "a unique field has no default", FIELD_DEFINITION)
            if current["sensitive"] and body.default is not None:
                raise invalid_field("default", "a sensitive field has no default", FIELD_DEFINITION)
            values["default"] = _checked_default(spec, body.default)
        return await repo.update(field_id, values, expected_version=expected_version)

    async def archive(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        kind: str,
        field_id: UUID,
        expected_version: int | None,
        *,
        purge: bool,
    ) -> bool:
        """Archive the field (its values leave the records and are kept), or with
        ``purge`` delete an archived field and its values for good."""
        repo = FieldRepository(session, tenant)
        current = await repo.locked(kind, field_id)
        if current is None:
            return False
        if expected_version is not None and current["version"] != expected_version:
            raise VersionMismatch
        if purge:
            if current["archived_at"] is None:
                raise Conflict("Archive the field first; only an archived field is purged.")
            await repo.purge_values(field_id)
            return await repo.delete(field_id, expected_version=None)
        if current["archived_at"] is None:
            now = await session.scalar(select(func.now()))
            await repo.update(field_id, {"archived_at": now}, expected_version=None)
            await repo.take_out(kind, current["name"])
        return True

    async def restore(
        self, session: AsyncSession, tenant: TenantContext, kind: str, field_id: UUID
    ) -> Row | None:
        repo = FieldRepository(session, tenant)
        current = await repo.locked(kind, field_id)
        if current is None:
            return None
        if current["archived_at"] is None:
            return await repo.get(field_id)
        restored = await repo.update(field_id, {"archived_at": None}, expected_version=None)
        await repo.put_back(kind, current)
        return restored


field = FieldService()


# -- lookups follow their targets ----------------------------------------------------------
async def _target_deleted(
    session: AsyncSession, tenant: TenantContext, written: hooks.Written
) -> None:
    """A deleted record leaves no lookup pointing at it, in its transaction: each record
    whose lookup field held it has the value cleared (an update, with its event and
    history); a required lookup refuses the deletion (409: change those records first);
    an archived field's value goes (restoring the field must not bring back a reference
    to nothing)."""
    if written.action != "deleted" or written.kind not in LOOKUP_TARGETS:
        return
    repo = FieldRepository(session, tenant)
    holders = await repo.holding_record(written.kind, written.record_id)
    if not holders:
        return
    required = [h for h in holders if h["required"] and not h["archived"]]
    if required:
        first = required[0]
        raise Conflict(
            f"{len(required)} record(s) hold this {written.kind} in a required lookup "
            f"(custom.{first['name']} of {first['object']} {first['record_id']}): "
            "change them first."
        )
    for h in holders:
        if h["archived"]:
            await repo.forget_values(h["field_id"], [h["record_id"]])
            continue
        holder = TenantRepository.for_kind(h["object"])
        assert holder is not None  # a field's object is one of the kinds with fields
        await holder(session, tenant).update(
            h["record_id"], {"custom": {h["name"]: None}}, expected_version=None
        )


# The objects a lookup may point to (fields.schemas.Target).
LOOKUP_TARGETS = frozenset(get_args(Target))
hooks.on_write("fields.lookups", _target_deleted)
