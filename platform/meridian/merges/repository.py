"""Duplicate rules, merge records, and the statements of a merge and of its undo: the
candidates of a record's rules, its group's rows as stored, and the references to them.

Which references a merge moves is found, not listed: every foreign key of the shard's
metadata (``ShardBase.metadata``, complete once the app has imported every domain) that
points at the kind's table — a contact's account, an opportunity's, a case's contact,
an activity's links, a child account's parent — plus the references no foreign key
states: record shares (``record_share``: kind and id), lookup custom fields
(``custom_value.ref_value``, a record's ``custom``) and a converted lead's
``converted_<kind>_id``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, cast
from uuid import UUID

import asyncpg
import orjson
from sqlalchemy import (
    JSON,
    ColumnElement,
    Date,
    DateTime,
    LargeBinary,
    Numeric,
    Table,
    Uuid,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from authz.models import RecordShare
from meridian.crud.compiled import fetch
from meridian.crud.custom import CustomValue, FieldDefinition
from meridian.crud.repository import TenantRepository
from meridian.merges.matching import MAX_CANDIDATES
from meridian.merges.models import DuplicateRule, DuplicateRuleRow, MergeRecord, MergeRecordRow
from meridian.web.responses import dumps
from tenancy.planes import ShardBase

# How long a merge can be undone; its snapshot is deleted after that (worker retention).
UNDO_WINDOW = timedelta(days=30)
# Columns of a record that are its identity and bookkeeping, never a value a merge picks.
BOOKKEEPING = frozenset({"tenant_id", "id", "created_at", "updated_at", "version"})
# References without a foreign key: a converted lead's (ids only, by design).
SOFT_REFERENCES: Mapping[str, tuple[tuple[str, str], ...]] = {
    "account": (("lead", "converted_account_id"),),
    "contact": (("lead", "converted_contact_id"),),
    "lead": (),
}


class DuplicateRuleRepository(TenantRepository[DuplicateRuleRow]):
    model = DuplicateRule
    event_kind = "duplicate_rule"

    @classmethod
    async def fetch_of_kind(
        cls, conn: asyncpg.Connection, tenant_id: UUID, kind: str
    ) -> list[DuplicateRuleRow]:
        """The tenant's rules of ``kind``, active or not (a tenant has a handful)."""
        stmt = (
            select(*cls.read_columns())
            .where(DuplicateRule.tenant_id == tenant_id, DuplicateRule.kind == kind)
            .order_by(DuplicateRule.created_at, DuplicateRule.id)
        )
        return [cls.row_from(r) for r in await fetch(conn, stmt)]

    async def name_taken(self, kind: str, name: str, other_than: UUID | None) -> UUID | None:
        stmt = select(DuplicateRule.id).where(
            DuplicateRule.tenant_id == self.tenant_id,
            DuplicateRule.kind == kind,
            DuplicateRule.name == name,
        )
        if other_than is not None:
            stmt = stmt.where(DuplicateRule.id != other_than)
        found: UUID | None = await self.session.scalar(stmt)
        return found

    async def kind_of(self, rule_id: UUID) -> str | None:
        stmt = select(DuplicateRule.kind).where(
            DuplicateRule.tenant_id == self.tenant_id, DuplicateRule.id == rule_id
        )
        kind: str | None = await self.session.scalar(stmt)
        return kind


class MergeRepository(TenantRepository[MergeRecordRow]):
    """Merge records. Their writes append no events of their own: a merge is the
    survivor's ``<kind>.merged`` event (and an undo its ``<kind>.unmerged``)."""

    model = MergeRecord
    # The snapshot is what an undo reads; the API never shows it.
    hidden = TenantRepository.hidden | {"snapshot"}

    async def add(self, values: Mapping[str, Any]) -> MergeRecordRow:
        stmt = (
            insert(MergeRecord)
            .values(tenant_id=self.tenant_id, **values)
            .returning(*self.read_columns())
        )
        row = (await self.session.execute(stmt)).mappings().one()
        return cast(MergeRecordRow, dict(row))

    async def locked(self, merge_id: UUID) -> dict[str, Any] | None:
        """The merge with its snapshot, locked until commit (one undo at a time)."""
        stmt = (
            select(*self.read_columns(), MergeRecord.snapshot)
            .where(MergeRecord.tenant_id == self.tenant_id, MergeRecord.id == merge_id)
            .with_for_update()
        )
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        return dict(row) if row is not None else None

    async def mark_undone(
        self, merge_id: UUID, actor: tuple[str, str | None], skipped: list[dict[str, Any]]
    ) -> MergeRecordRow:
        stmt = (
            update(MergeRecord)
            .where(MergeRecord.tenant_id == self.tenant_id, MergeRecord.id == merge_id)
            .values(
                state="undone",
                snapshot=None,
                undone_at=datetime.now(UTC),
                undone_by_type=actor[0],
                undone_by_id=actor[1],
                skipped=skipped,
                version=MergeRecord.version + 1,
                updated_at=datetime.now(UTC),
            )
            .returning(*self.read_columns())
        )
        row = (await self.session.execute(stmt)).mappings().one()
        return cast(MergeRecordRow, dict(row))


# Retention (meridian.worker.retention): a snapshot past the undo window is deleted; the
# merge's record stays (who merged what, when), as ``expired``.
EXPIRE_SNAPSHOTS = text(
    """
    UPDATE merge_record
       SET snapshot = NULL, state = 'expired', updated_at = now(), version = version + 1
     WHERE tenant_id = :tenant_id AND state = 'merged' AND created_at < :cutoff
    """
)


async def expire_snapshots(session: AsyncSession, tenant_id: UUID) -> int:
    """The tenant's merge snapshots older than the undo window, deleted; how many."""
    result = await session.execute(
        EXPIRE_SNAPSHOTS, {"tenant_id": tenant_id, "cutoff": datetime.now(UTC) - UNDO_WINDOW}
    )
    return int(getattr(result, "rowcount", 0) or 0)


# -- rows as stored, in and out of a snapshot ---------------------------------------------------
def table_of(kind: str) -> Table:
    table: Table = ShardBase.metadata.tables[kind]
    return table


def encode(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored row as JSON: bytes (ciphertexts, blind indexes) as base64, times ISO."""
    plain = {
        k: base64.b64encode(bytes(v)).decode() if isinstance(v, bytes | memoryview) else v
        for k, v in row.items()
    }
    decoded: dict[str, Any] = orjson.loads(dumps(plain))
    return decoded


def decode(table: Table, data: Mapping[str, Any]) -> dict[str, Any]:
    """``encode``'s inverse for a row of ``table``: each value typed as its column."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        column = table.c[key]
        if value is None or isinstance(column.type, JSON):
            out[key] = value
        elif isinstance(column.type, LargeBinary):
            out[key] = base64.b64decode(value)
        elif isinstance(column.type, DateTime):
            out[key] = datetime.fromisoformat(value)
        elif isinstance(column.type, Date):
            out[key] = date.fromisoformat(value)
        elif isinstance(column.type, Uuid):
            out[key] = UUID(str(value))
        elif isinstance(column.type, Numeric):
            out[key] = Decimal(str(value))
        else:
            out[key] = value
    return out


def stored_columns(table: Any) -> list[Any]:
    return [c for c in table.c if c.key != "tenant_id"]


@dataclass(frozen=True, slots=True)
class Reference:
    """A column of ``table`` holding the id of another record."""

    table: str
    column: str

    @property
    def key(self) -> str:
        return f"{self.table}.{self.column}"


def references_to(kind: str) -> list[Reference]:
    """Every column referring to a ``kind`` record: the foreign keys of the shard's
    metadata, then the references no key states (``SOFT_REFERENCES``)."""
    found: list[Reference] = []
    for table in sorted(ShardBase.metadata.tables.values(), key=lambda t: t.name):
        for fk in table.foreign_key_constraints:
            if fk.referred_table.name != kind:
                continue
            columns = [c.key for c in fk.columns if c.key != "tenant_id"]
            found.extend(Reference(table.name, c) for c in columns)
    found.extend(Reference(t, c) for t, c in SOFT_REFERENCES[kind])
    return found


class Merging:
    """A merge's (and an undo's) statements in the tenant's write transaction. Every
    statement names the tenant; none is limited by a record scope (the caller's was
    checked on the merged records: references are the tenant's)."""

    def __init__(self, session: AsyncSession, tenant_id: UUID) -> None:
        self.session = session
        self.tenant_id = tenant_id

    async def stored(self, kind: str, ids: Sequence[UUID], *, lock: bool) -> list[dict[str, Any]]:
        """The rows of ``ids`` as stored (ciphertexts, blind indexes), in id order."""
        table = table_of(kind)
        stmt = (
            select(*stored_columns(table))
            .where(table.c.tenant_id == self.tenant_id, table.c.id.in_(list(ids)))
            .order_by(table.c.id)
        )
        if lock:
            stmt = stmt.with_for_update(key_share=True)
        return [dict(r) for r in (await self.session.execute(stmt)).mappings()]

    async def exists(self, kind: str, record_id: UUID) -> bool:
        table = table_of(kind)
        stmt = select(table.c.id).where(
            table.c.tenant_id == self.tenant_id, table.c.id == record_id
        )
        return await self.session.scalar(stmt) is not None

    async def referring(
        self, ref: Reference, ids: Sequence[UUID], *, exclude: Sequence[UUID] = ()
    ) -> list[tuple[UUID, UUID]]:
        """(row id, referred id) of the rows of ``ref.table`` referring to ``ids``."""
        table = table_of(ref.table)
        column = table.c[ref.column]
        stmt = select(table.c.id, column).where(
            table.c.tenant_id == self.tenant_id, column.in_(list(ids))
        )
        if exclude:
            stmt = stmt.where(table.c.id.not_in(list(exclude)))
        rows = await self.session.execute(stmt.order_by(table.c.id))
        return [(r[0], r[1]) for r in rows]

    async def current(self, ref: Reference, row_id: UUID) -> tuple[bool, Any]:
        """Whether the row exists, and its ``ref.column``, locked for the change."""
        table = table_of(ref.table)
        stmt = (
            select(table.c[ref.column])
            .where(table.c.tenant_id == self.tenant_id, table.c.id == row_id)
            .with_for_update(key_share=True)
        )
        row = (await self.session.execute(stmt)).first()
        return (row is not None, row[0] if row is not None else None)

    async def repoint(
        self, ref: Reference, row_ids: Sequence[UUID], old: UUID, new: UUID
    ) -> list[UUID]:
        """Rows without a version of their own (activities): ``ref.column`` from ``old``
        to ``new`` where it still is ``old``; the ids changed."""
        table = table_of(ref.table)
        column = table.c[ref.column]
        stmt = (
            update(table)
            .where(
                table.c.tenant_id == self.tenant_id,
                table.c.id.in_(list(row_ids)),
                column == old,
            )
            .values({ref.column: new})
            .returning(table.c.id)
        )
        return list((await self.session.scalars(stmt)).all())

    # -- record shares --------------------------------------------------------------------
    async def shares_of(self, kind: str, ids: Sequence[UUID]) -> list[dict[str, Any]]:
        s = RecordShare
        stmt = (
            select(*stored_columns(s.__table__))
            .where(s.tenant_id == self.tenant_id, s.record_kind == kind, s.record_id.in_(ids))
            .order_by(s.created_at, s.id)
            .with_for_update()
        )
        return [dict(r) for r in (await self.session.execute(stmt)).mappings()]

    async def move_share(self, share_id: UUID, old: UUID, new: UUID) -> dict[str, Any] | None:
        s = RecordShare
        stmt = (
            update(s)
            .where(s.tenant_id == self.tenant_id, s.id == share_id, s.record_id == old)
            .values(record_id=new)
            .returning(*stored_columns(s.__table__))
        )
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        return dict(row) if row is not None else None

    async def drop_share(self, share_id: UUID) -> None:
        s = RecordShare
        await self.session.execute(delete(s).where(s.tenant_id == self.tenant_id, s.id == share_id))

    async def share_grantee_taken(self, row: Mapping[str, Any]) -> bool:
        """Whether the record already has a share with this share's grantee (or the
        grantee is gone): a share put back must not duplicate a grant."""
        s = RecordShare
        grantee: ColumnElement[bool] = (
            s.user_id == row["user_id"]
            if row["user_id"] is not None
            else s.team_id == row["team_id"]
        )
        stmt = select(s.id).where(
            s.tenant_id == self.tenant_id, s.record_id == row["record_id"], grantee
        )
        return await self.session.scalar(stmt) is not None

    async def user_exists(self, user_id: UUID) -> bool:
        users = table_of("app_user")
        stmt = select(users.c.id).where(users.c.tenant_id == self.tenant_id, users.c.id == user_id)
        return await self.session.scalar(stmt) is not None

    async def restore_share(self, row: Mapping[str, Any]) -> None:
        await self.session.execute(
            insert(RecordShare).values(tenant_id=self.tenant_id, **dict(row))
        )

    # -- custom fields ------------------------------------------------------------------------
    async def lookup_fields(self, target: str) -> list[dict[str, Any]]:
        """The tenant's lookup fields (of any object, archived too) pointing at ``target``."""
        d = FieldDefinition
        stmt = select(d.id, d.object, d.name, d.archived_at).where(
            d.tenant_id == self.tenant_id,
            d.type == "lookup",
            d.options["target"].astext == target,
        )
        return [dict(r) for r in (await self.session.execute(stmt)).mappings()]

    async def lookups_of(
        self, field_ids: Sequence[UUID], ids: Sequence[UUID]
    ) -> list[tuple[UUID, UUID, UUID]]:
        """(field id, record id, referred id) of the lookup values naming ``ids``."""
        v = CustomValue
        stmt = (
            select(v.field_id, v.record_id, v.ref_value)
            .where(
                v.tenant_id == self.tenant_id,
                v.field_id.in_(list(field_ids)),
                v.ref_value.in_(list(ids)),
            )
            .order_by(v.field_id, v.record_id)
        )
        rows = await self.session.execute(stmt)
        return [(r[0], r[1], cast(UUID, r[2])) for r in rows]

    async def repoint_lookup(self, field_id: UUID, record_id: UUID, old: UUID, new: UUID) -> bool:
        """An archived lookup field's value (kept in ``custom_value`` only)."""
        v = CustomValue
        stmt = (
            update(v)
            .where(
                v.tenant_id == self.tenant_id,
                v.field_id == field_id,
                v.record_id == record_id,
                v.ref_value == old,
            )
            .values(ref_value=new)
            .returning(v.record_id)
        )
        return (await self.session.scalar(stmt)) is not None

    async def custom_values(self, ids: Sequence[UUID]) -> list[dict[str, Any]]:
        v = CustomValue
        stmt = (
            select(*stored_columns(v.__table__))
            .where(v.tenant_id == self.tenant_id, v.record_id.in_(list(ids)))
            .order_by(v.record_id, v.field_id, v.item)
        )
        return [dict(r) for r in (await self.session.execute(stmt)).mappings()]

    async def restore_custom_values(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Custom values put back as they were, but for those the record has again (its
        active fields, written by the insert)."""
        if not rows:
            return
        v = CustomValue
        present = await self.session.execute(
            select(v.field_id, v.record_id, v.item).where(
                v.tenant_id == self.tenant_id,
                v.record_id.in_(list({r["record_id"] for r in rows})),
            )
        )
        have = {(r[0], r[1], r[2]) for r in present}
        missing = [
            {"tenant_id": self.tenant_id, **dict(r)}
            for r in rows
            if (r["field_id"], r["record_id"], r["item"]) not in have
        ]
        if missing:
            await self.session.execute(insert(v), missing)

    async def unique_taken(self, rows: Sequence[Mapping[str, Any]]) -> UUID | None:
        """A record now holding a unique custom value one of ``rows`` had."""
        v = CustomValue
        for row in rows:
            if row.get("unique_value") is None:
                continue
            stmt = select(v.record_id).where(
                v.tenant_id == self.tenant_id,
                v.field_id == row["field_id"],
                v.unique_value == row["unique_value"],
            )
            holder: UUID | None = await self.session.scalar(stmt)
            if holder is not None:
                return holder
        return None

    async def insert_row(self, kind: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """A merged record back, as it was stored (ciphertexts as they were)."""
        table = table_of(kind)
        stmt = (
            insert(table)
            .values(tenant_id=self.tenant_id, **dict(values))
            .returning(*stored_columns(table))
        )
        return dict((await self.session.execute(stmt)).mappings().one())

    async def external_id_holder(self, kind: str, external_id: str) -> UUID | None:
        table = table_of(kind)
        stmt = select(table.c.id).where(
            table.c.tenant_id == self.tenant_id, table.c.external_id == external_id
        )
        found: UUID | None = await self.session.scalar(stmt)
        return found


async def fetch_candidates(
    conn: asyncpg.Connection,
    repo: type[TenantRepository[Any]],
    tenant_id: UUID,
    viewer: UUID | None,
    record_id: UUID,
    criterion: ColumnElement[bool],
    extra: Sequence[str],
) -> list[dict[str, Any]]:
    """Up to ``MAX_CANDIDATES`` of the tenant's records meeting ``criterion`` (a rule's
    indexed condition) that ``viewer`` may see, the record itself left out; with the
    ``extra`` columns (blind indexes) that matching compares."""
    stmt = select(*repo.read_columns(), *(repo.attr(c) for c in extra)).where(
        repo.attr("tenant_id") == tenant_id, repo.attr("id") != record_id, criterion
    )
    visible = repo.visibility(tenant_id, viewer)
    if visible is not None:
        stmt = stmt.where(visible)
    stmt = stmt.order_by(repo.attr("id")).limit(MAX_CANDIDATES)
    return [dict(repo.row_from(r)) for r in await fetch(conn, stmt)]
