"""The tenant-scoped repository every shard resource builds on.

Every statement names ``tenant_id`` explicitly (RLS hides rows but does not route on
Citus), and reads select columns rather than ORM objects to keep object churn off the
hot paths. Rows come back as plain mappings ready for JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar
from uuid import UUID

import asyncpg
from sqlalchemy import ColumnElement, Select, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from meridian.crud.compiled import compile_sql, fetch
from meridian.crud.pagination import Cursor, Sort, after, order_by
from tenancy.context import TenantContext
from tenancy.planes import ShardBase

M = TypeVar("M", bound=ShardBase)

# Never part of an API representation: the tenant is implied by the token.
_HIDDEN = frozenset({"tenant_id"})
# SQL of the by-id read, compiled once per repository class.
_GET_SQL: dict[type[Any], str] = {}


class VersionMismatch(Exception):
    """The row exists but its version is not the one the client expected (412)."""


class TenantRepository(Generic[M]):
    model: ClassVar[type[Any]]

    def __init__(self, session: AsyncSession, tenant: TenantContext) -> None:
        self.session = session
        self.tenant = tenant
        self.tenant_id = tenant.tenant_id

    # -- column plumbing ------------------------------------------------------------
    @classmethod
    def attr(cls, name: str) -> InstrumentedAttribute[Any]:
        attribute: InstrumentedAttribute[Any] = getattr(cls.model, name)
        return attribute

    @classmethod
    def read_columns(cls) -> list[InstrumentedAttribute[Any]]:
        return [cls.attr(c.key) for c in cls.model.__table__.columns if c.key not in _HIDDEN]

    def scoped(self) -> ColumnElement[bool]:
        criterion: ColumnElement[bool] = self.attr("tenant_id") == self.tenant_id
        return criterion

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

    # -- hot reads on a raw connection (ShardRouter.reader) ---------------------------
    @classmethod
    async def fetch_one(
        cls, conn: asyncpg.Connection, tenant_id: UUID, record_id: UUID
    ) -> dict[str, Any] | None:
        sql = _GET_SQL.get(cls)
        if sql is None:
            stmt = select(*cls.read_columns()).where(
                cls.attr("tenant_id") == bindparam("tenant_id"),
                cls.attr("id") == bindparam("id"),
            )
            sql = _GET_SQL[cls] = compile_sql(stmt, ("tenant_id", "id"))
        row = await conn.fetchrow(sql, tenant_id, record_id)
        return dict(row) if row is not None else None

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
    ) -> list[dict[str, Any]]:
        stmt = cls.page_statement(tenant_id, where=where, sort=sort, limit=limit, cursor=cursor)
        return [dict(r) for r in await fetch(conn, stmt)]

    # -- reads in a session ---------------------------------------------------------
    async def get(self, record_id: UUID) -> dict[str, Any] | None:
        stmt = self.select_rows().where(self.attr("id") == record_id)
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        return dict(row) if row is not None else None

    async def exists(self, record_id: UUID) -> bool:
        stmt = (
            select(func.count())
            .select_from(self.model)
            .where(self.scoped(), self.attr("id") == record_id)
        )
        return bool(await self.session.scalar(stmt))

    async def page(
        self,
        *,
        where: Sequence[ColumnElement[bool]],
        sort: Sort,
        limit: int,
        cursor: Cursor | None,
    ) -> list[dict[str, Any]]:
        stmt = self.page_statement(
            self.tenant_id, where=where, sort=sort, limit=limit, cursor=cursor
        )
        result = await self.session.execute(stmt)
        return [dict(r) for r in result.mappings()]

    # -- writes ---------------------------------------------------------------------
    async def insert(self, values: Mapping[str, Any]) -> dict[str, Any]:
        stmt = (
            insert(self.model)
            .values(tenant_id=self.tenant_id, **values)
            .returning(*self.read_columns())
        )
        row = (await self.session.execute(stmt)).mappings().one()
        return dict(row)

    async def update(
        self, record_id: UUID, values: Mapping[str, Any], *, expected_version: int | None
    ) -> dict[str, Any] | None:
        """Apply ``values``; None if the row does not exist. Raises VersionMismatch."""
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
        if row is not None:
            return dict(row)
        if expected_version is not None and await self.exists(record_id):
            raise VersionMismatch
        return None

    async def delete(self, record_id: UUID, *, expected_version: int | None) -> bool:
        conditions = [self.scoped(), self.attr("id") == record_id]
        if expected_version is not None:
            conditions.append(self.attr("version") == expected_version)
        stmt = delete(self.model).where(*conditions).returning(self.attr("id"))
        deleted = (await self.session.execute(stmt)).first()
        if deleted is not None:
            return True
        if expected_version is not None and await self.exists(record_id):
            raise VersionMismatch
        return False
