"""The tenant-scoped repository every shard resource builds on.

Every statement names ``tenant_id`` explicitly (RLS hides rows but does not route on
Citus), and reads select columns rather than ORM objects to keep object churn off the
hot paths. Rows come back as plain dicts ready for JSON, typed by the repository's row
type (a ``TypedDict`` beside its model, whose keys a test holds to the columns read).

Record scope: a repository whose model has an ``owner_id`` is record-scoped. Reads and
writes given a ``viewer`` (a user id) carry the ``authz.scope`` predicate in their own
WHERE clause, so a record outside the viewer's scope is never read, changed or deleted;
``viewer=None`` means an actor who sees every record (a client, an admin).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar, cast
from uuid import UUID

import asyncpg
import orjson
from sqlalchemy import (
    JSON,
    BindParameter,
    ColumnElement,
    Integer,
    Select,
    Table,
    Uuid,
    and_,
    bindparam,
    delete,
    exists,
    func,
    literal_column,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, aliased

from authz.models import RECORD_KINDS
from authz.scope import Value, has_reports, visible_to, visible_to_leaf
from meridian.crud import custom, quota
from meridian.crud.compiled import (
    Compiled,
    compile_statement,
    fetch,
    prepared,
    prepared_from,
    shape,
)
from meridian.crud.hooks import Written, record_written
from meridian.crud.pagination import Cursor, Sort, after, order_by
from meridian.errors import Duplicate
from meridian.events import outbox
from tenancy.context import TenantContext
from tenancy.planes import ShardBase

# A repository's row: the TypedDict of the columns it reads (``read_columns``).
R = TypeVar("R", bound=Mapping[str, Any])
# Any repository's row, as flows that serve every record kind see it.
Row = Mapping[str, Any]

# Never part of an API representation: the tenant is implied by the token.
_HIDDEN = frozenset({"tenant_id"})
_GENERIC_PLANS = "SET LOCAL plan_cache_mode = force_generic_plan"
# The values a statement compiled once (meridian.crud.compiled) takes per request.
_TENANT: BindParameter[UUID] = bindparam("scope_tenant", type_=Uuid())
_VIEWER: BindParameter[UUID] = bindparam("scope_viewer", type_=Uuid())
_RECORD: BindParameter[UUID] = bindparam("scope_record", type_=Uuid())
_ROWS: BindParameter[int] = bindparam("scope_rows", type_=Integer())


# session.info key: the (table, record id) pairs the transaction wrote (id None for a
# creation, which changes lists only), for the caches to forget once it commits.
WRITTEN = "meridian.written"


def written(session: AsyncSession) -> set[tuple[str, UUID | None]]:
    """What the session's transaction wrote so far (and forgets it)."""
    notes: set[tuple[str, UUID | None]] = session.info.pop(WRITTEN, set())
    return notes


@functools.lru_cache(maxsize=256)
def _insert_statement(table: Table, returned: tuple[str, ...], on_external_id: bool) -> Any:
    """A table's INSERT, built once: the values go with each execution (building the
    statement with them costs more Python than the database takes to run it, and a
    batch runs a thousand). ``on_external_id``: nothing is inserted when another row
    has the ``external_id``."""
    stmt = pg_insert(table)
    if on_external_id:
        stmt = stmt.on_conflict_do_nothing(
            index_elements=["tenant_id", "external_id"],
            index_where=table.c.external_id.is_not(None),
        )
    return stmt.returning(*(table.c[name] for name in returned))


def _plain(row: RowMapping) -> dict[str, Any]:
    """A Core statement's row with plain ``str`` keys (SQLAlchemy's are ``str``
    subclasses, which orjson refuses as keys: the row goes into JSON, idempotency
    records and caches)."""
    return {str(key): value for key, value in row.items()}


class VersionMismatch(Exception):
    """The row exists but its version is not the one the client expected (412)."""


class ExternalIdTaken(Duplicate):
    """Another record of the kind has this ``external_id`` in the tenant: 409
    ``duplicate`` naming it (whoever's record scope it is in, as a contact's duplicate
    email does)."""

    def __init__(self, kind: str, external_id: str, record_id: UUID) -> None:
        super().__init__(
            f"external_id {external_id!r} is already used by {kind} {record_id}.",
            duplicate_of=str(record_id),
        )
        self.record_id = record_id


class TenantRepository(Generic[R]):
    model: ClassVar[type[ShardBase]]
    # Columns never part of an API representation.
    hidden: ClassVar[frozenset[str]] = _HIDDEN
    # Scoped lists are built to do well under a generic plan, whoever runs them. Left
    # to choose, PostgreSQL often re-plans them at every execution (the generic
    # estimate looks dearer than a custom plan) and a custom plan costs ~0.6 ms to make,
    # more than running it. The read pools of PostgreSQL shards set plan_cache_mode =
    # force_generic_plan on their connections (sharding.engine.traits; Citus shards
    # keep the server's default, under which Citus can route these reads); a connection
    # without it can turn this on to send SET LOCAL first, at one more round trip.
    set_generic_plans: ClassVar[bool] = False
    # Repository of each table, for flows that know a record's kind only.
    _by_kind: ClassVar[dict[str, type[TenantRepository[Any]]]] = {}

    # JSON columns, which the raw read path (asyncpg, no codecs) returns as text.
    json_columns: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        model = cls.__dict__.get("model")
        if model is not None:
            # The first repository of a table is its canonical one.
            TenantRepository._by_kind.setdefault(model.__tablename__, cls)
            cls.json_columns = tuple(
                c.key for c in model.__table__.columns if isinstance(c.type, JSON)
            )

    @classmethod
    def row_from(cls, record: Mapping[str, Any]) -> R:
        """A row read on the raw path as the ORM path would give it (JSON decoded)."""
        row = dict(record)
        for name in cls.json_columns:
            value = row.get(name)
            if isinstance(value, str):
                row[name] = orjson.loads(value)
        return cast(R, row)

    def __init__(
        self, session: AsyncSession, tenant: TenantContext, *, viewer: UUID | None = None
    ) -> None:
        self.session = session
        self.tenant = tenant
        self.tenant_id = tenant.tenant_id
        self.viewer = viewer

    @staticmethod
    def for_kind(kind: str) -> type[TenantRepository[Any]] | None:
        """The repository of the table named ``kind`` (a router's KIND), if any."""
        return TenantRepository._by_kind.get(kind)

    # -- record scope ----------------------------------------------------------------
    @classmethod
    def visibility(cls, tenant_id: UUID, viewer: UUID | None) -> ColumnElement[bool] | None:
        """What ``viewer`` may see of this table; None when everything (no viewer, or a
        table without owners, which is not record-scoped)."""
        if viewer is None or "owner_id" not in cls.model.__table__.c:
            return None
        kind: str = cls.model.__tablename__
        shareable = kind if kind in RECORD_KINDS else None
        return visible_to(cls.attr("owner_id"), cls.attr("id"), shareable, tenant_id, viewer)

    @classmethod
    def is_scoped_for(cls, viewer: UUID | None) -> bool:
        return viewer is not None and "owner_id" in cls.model.__table__.c

    # -- column plumbing ------------------------------------------------------------
    @classmethod
    def attr(cls, name: str) -> InstrumentedAttribute[Any]:
        attribute: InstrumentedAttribute[Any] = getattr(cls.model, name)
        return attribute

    @classmethod
    def read_columns(cls) -> list[InstrumentedAttribute[Any]]:
        return [cls.attr(c.key) for c in cls.model.__table__.columns if c.key not in cls.hidden]

    def scoped(self) -> ColumnElement[bool]:
        """The tenant, and the viewer's record scope when there is one."""
        criterion: ColumnElement[bool] = self.attr("tenant_id") == self.tenant_id
        visible = self.visibility(self.tenant_id, self.viewer)
        return criterion if visible is None else and_(criterion, visible)

    def select_rows(self) -> Select[Any]:
        return select(*self.read_columns()).where(self.scoped())

    @classmethod
    def page_statement(
        cls,
        tenant_id: UUID,
        *,
        where: Sequence[ColumnElement[bool]],
        sort: Sort,
        limit: int,
        cursor: Cursor | None,
    ) -> Select[Any]:
        """Up to ``limit + 1`` rows (the extra one tells whether a next page exists)."""
        id_col = cls.attr("id")
        stmt = select(*cls.read_columns()).where(cls.attr("tenant_id") == tenant_id, *where)
        if cursor is not None:
            stmt = stmt.where(after(sort, id_col, cursor))
        return stmt.order_by(*order_by(sort, id_col)).limit(limit + 1)

    @classmethod
    def _scope_page(
        cls,
        base: Select[Any],
        sort: Sort,
        tenant_id: Value,
        viewer: Value,
        rows: int | BindParameter[int],
    ) -> Select[Any]:
        """The page ``base`` (a ``page_statement``) as ``viewer`` sees it.

        Two branches, of which only one reads anything (see ``authz.scope``): for a
        viewer with reports, the page in sort order filtered by ``visible_to``; for one
        without, every record they own or were shared, through the owner and primary-key
        indexes, then sorted. The second is a MATERIALIZED CTE so that PostgreSQL plans
        it without the LIMIT: otherwise a prepared statement's generic plan may walk the
        sort index (thousands of rows for one user's few dozen).
        """
        kind: str = cls.model.__tablename__
        shareable = kind if kind in RECORD_KINDS else None
        owner, record_id = cls.attr("owner_id"), cls.attr("id")
        reports = has_reports(tenant_id, viewer)
        leaf = visible_to_leaf(owner, record_id, shareable, tenant_id, viewer)
        own = (
            base.order_by(None)
            .limit(None)
            .where(~reports, leaf)
            .cte("own")
            .prefix_with("MATERIALIZED")
        )
        wide = base.where(reports, visible_to(owner, record_id, shareable, tenant_id, viewer))
        branches = union_all(select(own), wide).subquery("visible")
        key, last = branches.c[sort.column.key], branches.c.id
        ordering = [key.desc(), last.desc()] if sort.descending else [key.asc(), last.asc()]
        columns = [branches.c[c.key] for c in cls.read_columns()]
        return select(*columns).order_by(*ordering).limit(rows)

    @classmethod
    def scoped_page_statement(
        cls,
        tenant_id: UUID,
        viewer: UUID | None,
        *,
        where: Sequence[ColumnElement[bool]],
        sort: Sort,
        limit: int,
        cursor: Cursor | None,
    ) -> Select[Any]:
        """``page_statement`` as ``viewer`` sees it: the scope is part of the query."""
        base = cls.page_statement(tenant_id, where=where, sort=sort, limit=limit, cursor=cursor)
        if not cls.is_scoped_for(viewer):
            return base
        assert viewer is not None
        return cls._scope_page(base, sort, tenant_id, viewer, limit + 1)

    @classmethod
    def scoped_page_sql(
        cls,
        tenant_id: UUID,
        viewer: UUID,
        *,
        where: Sequence[ColumnElement[bool]],
        sort: Sort,
        limit: int,
        cursor: Cursor | None,
    ) -> tuple[str, list[Any]]:
        """SQL and arguments of ``scoped_page_statement``, without building it.

        The scoped statement costs ~1 ms of Python to build, more than running it; the
        unscoped page costs a few dozen microseconds. So the scoped SQL is compiled once
        per shape of the unscoped page (SQLAlchemy's cache key: the same structure, bound
        values left out) with the scope's values as named parameters, and each request
        takes the values of its own unscoped page, in the same order.
        """
        base = cls.page_statement(tenant_id, where=where, sort=sort, limit=limit, cursor=cursor)
        key = shape(base)
        template: Compiled | None = None
        if key is not None:
            template = prepared_from(
                (cls, "scoped-page", key.key),
                lambda: cls._scope_page(base, sort, _TENANT, _VIEWER, _ROWS),
                key.bindparams,
            )
        if template is None or key is None:
            # A shape the template cannot express (e.g. an expanding IN list).
            return compile_statement(cls._scope_page(base, sort, tenant_id, viewer, limit + 1))
        scope = {_TENANT.key: tenant_id, _VIEWER.key: viewer, _ROWS.key: limit + 1}
        return template.sql, template.args_from(key.bindparams, scope)

    # -- hot reads on a raw connection (ShardRouter.reader) ---------------------------
    @classmethod
    async def fetch_visible(
        cls, conn: asyncpg.Connection, tenant_id: UUID, record_id: UUID, viewer: UUID | None
    ) -> R | None:
        """The record if ``viewer`` may see it (``fetch_one`` when nothing is hidden)."""
        if viewer is None or not cls.is_scoped_for(viewer):
            return await cls.fetch_one(conn, tenant_id, record_id)
        template = prepared((cls, "visible"), cls._visible_statement)
        values = {_TENANT.key: tenant_id, _VIEWER.key: viewer, _RECORD.key: record_id}
        found = await conn.fetchrow(template.sql, *template.args(values))
        return cls.row_from(found) if found is not None else None

    @classmethod
    def _visible_statement(cls) -> Select[Any]:
        # The predicate of the viewer's lists: a record opens exactly when it is listed.
        kind: str = cls.model.__tablename__
        shareable = kind if kind in RECORD_KINDS else None
        owner, id_col = cls.attr("owner_id"), cls.attr("id")
        visible = visible_to(owner, id_col, shareable, _TENANT, _VIEWER)
        return select(*cls.read_columns()).where(
            cls.attr("tenant_id") == _TENANT, id_col == _RECORD, visible
        )

    # Whether a by-id read is the row alone, so it can take the one-statement path
    # (ShardRouter.read_one); a repository whose fetch_one adds more sets this False.
    one_statement_reads: ClassVar[bool] = True

    @classmethod
    def by_id_sql(cls) -> str:
        """The by-id read for ``ShardRouter.read_one``: ``$1`` is the id and the tenant
        comes from the enter function's lateral ``e.tid``."""
        compiled = prepared((cls, "one-statement"), cls._one_statement)
        if compiled.names != (_RECORD.key,):
            raise ValueError(f"{cls.__name__}: the by-id read takes {compiled.names}")
        return compiled.sql

    @classmethod
    def _one_statement(cls) -> Select[Any]:
        return select(*cls.read_columns()).where(
            cls.attr("tenant_id") == literal_column("e.tid"),
            cls.attr("id") == _RECORD,
        )

    @classmethod
    async def fetch_one(
        cls, conn: asyncpg.Connection, tenant_id: UUID, record_id: UUID
    ) -> R | None:
        compiled = prepared((cls, "by-id"), cls._by_id_statement)
        row = await conn.fetchrow(
            compiled.sql, *compiled.args({_TENANT.key: tenant_id, _RECORD.key: record_id})
        )
        return cls.row_from(row) if row is not None else None

    @classmethod
    def _by_id_statement(cls) -> Select[Any]:
        return select(*cls.read_columns()).where(
            cls.attr("tenant_id") == _TENANT, cls.attr("id") == _RECORD
        )

    @classmethod
    async def fetch_page(
        cls,
        conn: asyncpg.Connection,
        tenant_id: UUID,
        *,
        where: Sequence[ColumnElement[bool]],
        sort: Sort,
        limit: int,
        cursor: Cursor | None,
    ) -> list[R]:
        stmt = cls.page_statement(tenant_id, where=where, sort=sort, limit=limit, cursor=cursor)
        return [cls.row_from(r) for r in await fetch(conn, stmt)]

    @classmethod
    async def fetch_scoped_page(
        cls,
        conn: asyncpg.Connection,
        tenant_id: UUID,
        viewer: UUID | None,
        *,
        where: Sequence[ColumnElement[bool]],
        sort: Sort,
        limit: int,
        cursor: Cursor | None,
    ) -> list[R]:
        """A page as ``viewer`` sees it (``fetch_page`` when nothing is hidden)."""
        if not cls.is_scoped_for(viewer):
            return await cls.fetch_page(
                conn, tenant_id, where=where, sort=sort, limit=limit, cursor=cursor
            )
        assert viewer is not None
        sql, args = cls.scoped_page_sql(
            tenant_id, viewer, where=where, sort=sort, limit=limit, cursor=cursor
        )
        if TenantRepository.set_generic_plans:
            await conn.execute(_GENERIC_PLANS)
        return [cls.row_from(r) for r in await conn.fetch(sql, *args)]

    @classmethod
    async def fetch_custom_sorted(
        cls,
        conn: asyncpg.Connection,
        tenant_id: UUID,
        viewer: UUID | None,
        *,
        where: Sequence[ColumnElement[bool]],
        sort: Sort,
        limit: int,
        cursor: Cursor | None,
    ) -> list[R]:
        """A page sorted by a custom field (``sort.custom``): first the records with a
        value, walked in ``custom_value``'s per-field index (value, record id); once those
        are done, the records without one, in id order. The cursor's value says which
        part it is in (None: the second)."""
        key = sort.custom
        assert key is not None
        v = aliased(custom.CustomValue)
        model_id = cls.attr("id")
        base = [cls.attr("tenant_id") == tenant_id, *where]
        visible = cls.visibility(tenant_id, viewer)
        if visible is not None:
            base.append(visible)
        rows: list[R] = []
        if cursor is None or cursor.value is not None:
            value = getattr(v, sort.column.key)
            stmt = (
                select(*cls.read_columns())
                .join(v, and_(v.tenant_id == cls.attr("tenant_id"), v.record_id == model_id))
                .where(
                    *base,
                    v.tenant_id == tenant_id,
                    v.field_id == key.field_id,
                    v.item == 0,
                    value.is_not(None),  # the partial index of the value's type
                )
            )
            if cursor is not None:
                pair, last = tuple_(value, v.record_id), tuple_(cursor.value, cursor.id)
                stmt = stmt.where(pair < last if sort.descending else pair > last)
            order = [value.desc(), v.record_id.desc()] if sort.descending else [value, v.record_id]
            stmt = stmt.order_by(*order).limit(limit + 1)
            rows = [cls.row_from(r) for r in await fetch(conn, stmt)]
        if len(rows) <= limit:
            without = ~exists(
                select(v.record_id).where(
                    v.tenant_id == tenant_id, v.field_id == key.field_id, v.record_id == model_id
                )
            )
            stmt = select(*cls.read_columns()).where(*base, without)
            if cursor is not None and cursor.value is None:
                stmt = stmt.where(model_id > cursor.id)
            stmt = stmt.order_by(model_id).limit(limit + 1 - len(rows))
            rows += [cls.row_from(r) for r in await fetch(conn, stmt)]
        return rows

    # -- reads in a session ---------------------------------------------------------
    async def get(self, record_id: UUID) -> R | None:
        stmt = self.select_rows().where(self.attr("id") == record_id)
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        return cast(R, dict(row)) if row is not None else None

    async def exists(self, record_id: UUID) -> bool:
        stmt = (
            select(func.count())
            .select_from(self.model)
            .where(self.scoped(), self.attr("id") == record_id)
        )
        return bool(await self.session.scalar(stmt))

    async def reference_exists(self, model: type[Any], record_id: UUID) -> bool:
        """Whether the tenant has the record a write is about to refer to, locked FOR KEY
        SHARE (the lock the foreign-key check itself takes) so it cannot be deleted
        between this check and the write it guards."""
        stmt = (
            select(model.id)
            .where(model.tenant_id == self.tenant_id, model.id == record_id)
            .with_for_update(read=True, key_share=True)
        )
        return await self.session.scalar(stmt) is not None

    async def find_external(self, external_id: str, *, lock: bool = False) -> UUID | None:
        """The id of the tenant's record with this ``external_id``, whatever this
        repository's record scope (the id is unique in the tenant); ``lock``: FOR NO KEY
        UPDATE, before changing it."""
        stmt = select(self.attr("id")).where(
            self.attr("tenant_id") == self.tenant_id, self.attr("external_id") == external_id
        )
        if lock:
            stmt = stmt.with_for_update(key_share=True)
        found: UUID | None = await self.session.scalar(stmt)
        return found

    async def lock_visible(self, record_id: UUID, *, for_update: bool) -> bool:
        """Whether the record exists within this repository's scope, locking it until
        commit: FOR NO KEY UPDATE before changing it (the lock the UPDATE would take; a
        concurrent owner change is waited for and the scope re-checked on the new row),
        FOR KEY SHARE to keep it from being deleted while something refers to it."""
        stmt = select(self.attr("id")).where(self.scoped(), self.attr("id") == record_id)
        stmt = (
            stmt.with_for_update(key_share=True)
            if for_update
            else stmt.with_for_update(read=True, key_share=True)
        )
        return await self.session.scalar(stmt) is not None

    async def lock_sealed(
        self, record_id: UUID, columns: Sequence[str]
    ) -> dict[str, bytes | None] | None:
        """``columns`` (a row's ciphertexts) of a record in scope, locked FOR NO KEY
        UPDATE: a change that re-encrypts the others must not race another change (or
        the re-encryption job) of the same row. None when there is no such record."""
        stmt = (
            select(*(self.attr(c) for c in columns))
            .where(self.scoped(), self.attr("id") == record_id)
            .with_for_update(key_share=True)
        )
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        return dict(row) if row is not None else None

    # -- writes ---------------------------------------------------------------------
    # Every write appends its events to the outbox in its own transaction
    # (meridian.events.outbox): "<event_kind>.created|updated|deleted", plus what
    # ``derived_events`` adds (an opportunity's stage change, won or lost).
    event_kind: ClassVar[str | None] = None

    @classmethod
    def kind_of_events(cls) -> str:
        return cls.event_kind or cls.model.__tablename__

    async def _written(self, written: Written) -> None:
        await record_written(self.session, self.tenant, written)

    def _note(self, record_id: UUID | None) -> None:
        self.session.info.setdefault(WRITTEN, set()).add((self.model.__tablename__, record_id))

    def _emit(
        self,
        action: str,
        row: Mapping[Any, Any],
        *,
        changes: Mapping[str, Any] | None = None,
    ) -> None:
        kind = self.kind_of_events()
        owner = row.get("owner_id")
        outbox.record(
            self.session,
            self.tenant_id,
            f"{kind}.{action}",
            kind,
            row.get("id"),
            owner_id=owner,
            record=outbox.snapshot(row, self.hidden),
            changes=changes,
        )

    async def derived_events(
        self, row: Mapping[Any, Any], changes: Mapping[str, Any] | None
    ) -> None:
        """Events a domain derives from a write of its records (``changes`` is None for a
        creation), queued with ``emit_derived``; none by default."""

    def emit_derived(
        self, type_: str, row: Mapping[Any, Any], extra: Mapping[str, Any] | None = None
    ) -> None:
        kind = self.kind_of_events()
        outbox.record(
            self.session,
            self.tenant_id,
            f"{kind}.{type_}",
            kind,
            row.get("id"),
            owner_id=row.get("owner_id"),
            record=outbox.snapshot(row, self.hidden),
            extra=extra,
        )

    @classmethod
    def has_custom_fields(cls) -> bool:
        return "custom" in cls.model.__table__.c

    async def insert(self, values: Mapping[str, Any]) -> R:
        if "tenant_id" in values:
            # The tenant is the repository's, never the caller's to choose.
            raise TypeError("insert() takes no tenant_id: the repository's tenant is used")
        prepared = None
        if self.has_custom_fields():
            # A CRM object: within the tenant's records per object (crud.quota).
            await quota.admit_record(self.session, self.tenant_id, self.model.__tablename__)
            # The tenant's own fields: checked, defaulted, and indexed with the row.
            prepared = await custom.prepare(
                self.session,
                self.tenant_id,
                self.model.__tablename__,
                values["id"],
                values.get("custom"),
                None,
            )
            values = {**values, "custom": prepared.custom}
        row = await self._inserted(values)
        if prepared is not None:
            await custom.index(self.session, self.tenant_id, row["id"], prepared)
        self._emit("created", row)
        self._note(None)
        await self.derived_events(row, None)
        await self._written(Written(self.model.__tablename__, "created", dict(row)))
        return cast(R, dict(row))

    async def _inserted(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The INSERT of a new row; an ``external_id`` another record has is refused
        (``ExternalIdTaken``), without an error in the transaction: nothing is inserted
        on that conflict, and a concurrent insert of the same id is waited for on the
        unique index, so two writers never both get it."""
        external_id: str | None = values.get("external_id")
        statement = _insert_statement(
            self.model.__table__, tuple(c.key for c in self.read_columns()), external_id is not None
        )
        params = {**values, "tenant_id": self.tenant_id}
        # On the session's connection: the ORM's execution path cost more Python than
        # the INSERT took, for a statement that loads no entity.
        conn = await self.session.connection()
        if external_id is None:
            return _plain((await conn.execute(statement, params)).mappings().one())
        for _ in range(3):
            row = (await conn.execute(statement, params)).mappings().one_or_none()
            if row is not None:
                return _plain(row)
            holder = await self.find_external(external_id)
            if holder is not None:
                raise ExternalIdTaken(self.model.__tablename__, external_id, holder)
            # Its holder let it go since (deleted, or given another id): again.
        raise Duplicate(f"external_id {external_id!r} is being taken by other writers; retry.")

    async def _before(self, record_id: UUID, columns: Sequence[str]) -> dict[str, Any] | None:
        """The stored values of ``columns`` (for the event's "from"), locked FOR NO KEY
        UPDATE, the lock the UPDATE itself takes; None when the row is not in scope."""
        table = self.model.__table__.c
        names = [c for c in columns if c in table]
        for name in list(names):
            # An encrypted field is compared by its blind index (see outbox).
            index = name.removesuffix("_enc") + "_bidx"
            if name.endswith("_enc") and index in table and index not in names:
                names.append(index)
        stmt = (
            select(self.attr("id"), *(self.attr(c) for c in names if c != "id"))
            .where(self.scoped(), self.attr("id") == record_id)
            .with_for_update(key_share=True)
        )
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        return dict(row) if row is not None else None

    async def update(
        self, record_id: UUID, values: Mapping[str, Any], *, expected_version: int | None
    ) -> R | None:
        """Apply ``values``; None if the row does not exist. Raises VersionMismatch."""
        before = await self._before(record_id, list(values))
        if before is None:
            return None
        if values.get("external_id") is not None:
            # Another record's: 409 naming it (two writers racing for one id: the unique
            # index refuses the second, a 409 conflict).
            holder = await self.find_external(values["external_id"])
            if holder is not None and holder != record_id:
                raise ExternalIdTaken(self.model.__tablename__, values["external_id"], holder)
        prepared = None
        if "custom" in values and self.has_custom_fields():
            # A patch of the record's own fields, merged into what it has.
            prepared = await custom.prepare(
                self.session,
                self.tenant_id,
                self.model.__tablename__,
                record_id,
                values["custom"],
                before["custom"],
            )
            values = {**values, "custom": prepared.custom}
        conditions = [self.scoped(), self.attr("id") == record_id]
        if expected_version is not None:
            conditions.append(self.attr("version") == expected_version)
        stmt = (
            update(self.model)
            .where(*conditions)
            .values(**values, version=self.attr("version") + 1, updated_at=func.now())
            .returning(*self.read_columns())
        )
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        if row is None:
            if expected_version is not None:
                raise VersionMismatch
            return None
        self._note(record_id)
        if prepared is not None:
            await custom.index(self.session, self.tenant_id, record_id, prepared)
        # What the row returns, and the written values of columns it does not (blind
        # indexes, a password hash), to compare with what was there.
        after = {**{k: v for k, v in values.items() if k in before}, **dict(row)}
        changes = outbox.changes_between(before, after, self.hidden)
        if changes:
            self._emit("updated", row, changes=changes)
            await self.derived_events(row, changes)
            await self._written(Written(self.model.__tablename__, "updated", dict(row), changes))
        return cast(R, dict(row))

    async def delete(self, record_id: UUID, *, expected_version: int | None) -> bool:
        conditions = [self.scoped(), self.attr("id") == record_id]
        if expected_version is not None:
            conditions.append(self.attr("version") == expected_version)
        stmt = delete(self.model).where(*conditions).returning(*self.read_columns())
        deleted = (await self.session.execute(stmt)).mappings().first()
        if deleted is not None:
            if self.has_custom_fields():
                await custom.forget(self.session, self.tenant_id, record_id)
            self._emit("deleted", deleted)
            self._note(record_id)
            await self._written(Written(self.model.__tablename__, "deleted", dict(deleted)))
            return True
        if expected_version is not None and await self.exists(record_id):
            raise VersionMismatch
        return False
