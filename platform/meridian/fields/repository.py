"""Custom field definitions, and the statements that move a field's values in and out
of its records when it is archived or restored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import delete, func, select, text

from meridian.crud.custom import CustomValue, FieldDefinition, FieldDefinitionRow
from meridian.crud.repository import TenantRepository

SORTABLE = {"created_at": FieldDefinition.created_at}
# How restoring a field rebuilds each type's JSON value from its typed rows.
_VALUE_OF = {
    "text": "to_jsonb(min(v.text_value))",
    "email": "to_jsonb(min(v.text_value))",
    "url": "to_jsonb(min(v.text_value))",
    "picklist": "to_jsonb(min(v.text_value))",
    "multi_picklist": "jsonb_agg(v.text_value ORDER BY v.item)",
    "number": "to_jsonb(min(v.number_value)::bigint)",
    "decimal": "to_jsonb(min(v.text_value))",
    "currency": "to_jsonb(min(v.text_value))",
    "date": "to_jsonb(min(v.date_value))",
    "datetime": "to_jsonb(min(v.time_value))",
    "boolean": "to_jsonb(bool_or(v.bool_value))",
    "lookup": "to_jsonb(min(v.ref_value::text))",
}


def _value_of(field: dict[str, Any]) -> str:
    if field["sensitive"]:
        # The record's ciphertext as it was: sealed for this record and field name.
        return "jsonb_build_object('sealed', min(v.sealed_value))"
    return _VALUE_OF[field["type"]]


def _table(kind: str) -> str:
    # A record table's name, quoted ("case" is an SQL keyword); kinds are a fixed set.
    return '"' + kind + '"'


class FieldRepository(TenantRepository[FieldDefinitionRow]):
    model = FieldDefinition
    event_kind = "field"

    def of_object(self, kind: str) -> Any:
        return FieldDefinition.object == kind

    async def named(self, kind: str, name: str) -> dict[str, Any] | None:
        stmt = select(*self.read_columns()).where(
            self.scoped(), self.of_object(kind), FieldDefinition.name == name
        )
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        return dict(row) if row is not None else None

    async def locked(self, kind: str, field_id: UUID) -> dict[str, Any] | None:
        stmt = (
            select(*self.read_columns())
            .where(self.scoped(), self.of_object(kind), FieldDefinition.id == field_id)
            .with_for_update(key_share=True)
        )
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        return dict(row) if row is not None else None

    async def count(self, kind: str) -> int:
        stmt = select(func.count()).where(self.scoped(), self.of_object(kind))
        return int(await self.session.scalar(stmt) or 0)

    async def holding(self, field_id: UUID, values: Sequence[str]) -> int:
        """How many records hold one of ``values`` (picklist values about to go)."""
        v = CustomValue
        stmt = select(func.count(func.distinct(v.record_id))).where(
            v.tenant_id == self.tenant_id, v.field_id == field_id, v.text_value.in_(values)
        )
        return int(await self.session.scalar(stmt) or 0)

    async def take_out(self, kind: str, name: str) -> int:
        """The field's values out of its records' ``custom`` (they stay in custom_value)."""
        result = await self.session.execute(
            text(
                f"UPDATE {_table(kind)} SET custom = custom - CAST(:name AS text), "  # noqa: S608
                "version = version + 1, updated_at = now() "
                "WHERE tenant_id = :tenant AND custom ? :name"
            ),
            {"name": name, "tenant": self.tenant_id},
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def put_back(self, kind: str, field: dict[str, Any]) -> int:
        """The field's values back into its records' ``custom``, from custom_value
        (``jsonb_set``: immutable, as Citus wants what an UPDATE computes from columns)."""
        result = await self.session.execute(
            text(
                f"UPDATE {_table(kind)} AS r "  # noqa: S608
                "SET custom = jsonb_set(r.custom, ARRAY[CAST(:name AS text)], k.value), "
                "version = r.version + 1, updated_at = now() "
                f"FROM (SELECT v.record_id, {_value_of(field)} AS value "
                "FROM custom_value v WHERE v.tenant_id = :tenant AND v.field_id = :field "
                "GROUP BY v.record_id) AS k "
                "WHERE r.tenant_id = :tenant AND r.id = k.record_id"
            ),
            {"name": field["name"], "tenant": self.tenant_id, "field": field["id"]},
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def holding_record(self, kind: str, record_id: UUID) -> list[dict[str, Any]]:
        """The lookups to the ``kind`` record ``record_id``: each holder's object, record
        id, and the field's name, whether it is required and whether it is archived."""
        v, d = CustomValue, FieldDefinition
        stmt = (
            select(
                d.id.label("field_id"),
                d.object,
                d.name,
                d.required,
                d.archived_at.is_not(None).label("archived"),
                v.record_id,
            )
            .join(v, (v.tenant_id == d.tenant_id) & (v.field_id == d.id))
            .where(
                d.tenant_id == self.tenant_id,
                d.type == "lookup",
                d.options["target"].astext == kind,
                v.tenant_id == self.tenant_id,
                v.ref_value == record_id,
            )
            .order_by(d.object, v.record_id)
        )
        return [dict(r) for r in (await self.session.execute(stmt)).mappings()]

    async def forget_values(self, field_id: UUID, record_ids: Sequence[UUID]) -> None:
        """An archived field's values of these records (kept while it is archived)."""
        v = CustomValue
        await self.session.execute(
            delete(v).where(
                v.tenant_id == self.tenant_id, v.field_id == field_id, v.record_id.in_(record_ids)
            )
        )

    async def purge_values(self, field_id: UUID) -> None:
        v = CustomValue
        await self.session.execute(
            delete(v).where(v.tenant_id == self.tenant_id, v.field_id == field_id)
        )
