"""Record shares: which users or teams (a manager and everyone below) a record is
shared with. One table for every shareable kind, so a share names its record by kind
and id, without a foreign key; deleting a record deletes its shares in the same
transaction (``meridian.crud.endpoints.remove``)."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import ColumnElement, delete, select

from authz.models import RecordShare
from meridian.crud.pagination import Sort
from meridian.crud.repository import TenantRepository

OLDEST_FIRST = Sort("created_at", RecordShare.created_at, descending=False)


class ShareRepository(TenantRepository[RecordShare]):
    model = RecordShare

    @staticmethod
    def of_record(record_kind: str, record_id: UUID) -> list[ColumnElement[bool]]:
        return [RecordShare.record_kind == record_kind, RecordShare.record_id == record_id]

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
            .returning(RecordShare.id)
        )
        return (await self.session.execute(stmt)).first() is not None

    async def forget_record(self, record_kind: str, record_id: UUID) -> None:
        """Drop the shares of a record that is being deleted."""
        stmt = (
            delete(RecordShare)
            .where(self.scoped(), *self.of_record(record_kind, record_id))
            .execution_options(synchronize_session=False)
        )
        await self.session.execute(stmt)
