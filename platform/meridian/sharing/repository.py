"""Record shares: which users or teams (a manager and everyone below) a record is
shared with. One table for every shareable kind, so a share names its record by kind
and id, without a foreign key; deleting a record deletes its shares in the same
transaction (``forget_shares``, a ``meridian.crud.hooks`` on-delete callback registered
when this module is imported, as it is by the app)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from authz.models import RECORD_KINDS, RecordShare, ShareRow
from meridian.crud import hooks
from meridian.crud.hooks import Written
from meridian.crud.pagination import Cursor, Sort
from meridian.crud.repository import TenantRepository
from tenancy.context import TenantContext

OLDEST_FIRST = Sort("created_at", RecordShare.created_at, descending=False)


class ShareRepository(TenantRepository[ShareRow]):
    model = RecordShare
    event_kind = "share"

    @staticmethod
    def of_record(record_kind: str, record_id: UUID) -> list[ColumnElement[bool]]:
        return [RecordShare.record_kind == record_kind, RecordShare.record_id == record_id]

    @classmethod
    async def fetch_of_record(
        cls,
        conn: asyncpg.Connection,
        record_repo: type[TenantRepository[Any]],
        tenant_id: UUID,
        record_id: UUID,
        *,
        viewer: UUID | None,
        limit: int,
        cursor: Cursor | None,
    ) -> list[ShareRow] | None:
        """A page of the shares of a record ``viewer`` can see, oldest first; None when
        the record does not exist or is out of their scope (the same 404 either way).
        Run in one read transaction, so the record's visibility and its shares agree."""
        if await record_repo.fetch_visible(conn, tenant_id, record_id, viewer) is None:
            return None
        kind: str = record_repo.model.__tablename__
        return await cls.fetch_page(
            conn,
            tenant_id,
            where=cls.of_record(kind, record_id),
            sort=OLDEST_FIRST,
            limit=limit,
            cursor=cursor,
        )

    async def find(
        self, record_kind: str, record_id: UUID, *, user_id: UUID | None, team_id: UUID | None
    ) -> UUID | None:
        """The id of this record's share with this grantee, if there is one."""
        grantee = (
            RecordShare.user_id == user_id
            if user_id is not None
            else RecordShare.team_id == team_id
        )
        stmt = select(RecordShare.id).where(
            self.scoped(), *self.of_record(record_kind, record_id), grantee
        )
        found: UUID | None = await self.session.scalar(stmt)
        return found

    async def revoke(self, record_kind: str, record_id: UUID, share_id: UUID) -> bool:
        stmt = (
            delete(RecordShare)
            .where(
                self.scoped(), RecordShare.id == share_id, *self.of_record(record_kind, record_id)
            )
            .returning(*self.read_columns())
        )
        row = (await self.session.execute(stmt)).mappings().first()
        if row is not None:
            self._emit("deleted", row)
        return row is not None

    async def forget_record(self, record_kind: str, record_id: UUID) -> None:
        """Drop the shares of a record that is being deleted."""
        stmt = (
            delete(RecordShare)
            .where(self.scoped(), *self.of_record(record_kind, record_id))
            .returning(*self.read_columns())
            .execution_options(synchronize_session=False)
        )
        for row in (await self.session.execute(stmt)).mappings().all():
            self._emit("deleted", row)


async def forget_shares(session: AsyncSession, tenant: TenantContext, written: Written) -> None:
    """A deleted record's shares go with it, in the transaction of the DELETE."""
    if written.action == "deleted" and written.kind in RECORD_KINDS:
        await ShareRepository(session, tenant).forget_record(written.kind, written.record_id)


hooks.on_write("sharing", forget_shares)
