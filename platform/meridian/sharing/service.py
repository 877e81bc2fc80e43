"""Sharing rules: only an actor who can see a record (and may update it) shares it or
revokes its shares; grantees are active users of the tenant. Nothing is cached for
scoped readers, so a grant or a revocation applies to their next request."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from authz.models import ShareRow
from meridian.crud.repository import TenantRepository
from meridian.errors import Conflict, NotFound
from meridian.ids import new_id
from meridian.sharing.repository import ShareRepository
from meridian.sharing.schemas import ShareCreate
from meridian.users.service import user as user_service
from tenancy.context import TenantContext


def record_not_found(kind: str, record_id: UUID) -> NotFound:
    return NotFound(f"No {kind} with id {record_id}.")


class SharingService:
    async def _lock_record(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        kind: str,
        record_id: UUID,
        viewer: UUID | None,
    ) -> None:
        """404 unless the record exists within the viewer's scope; FOR KEY SHARE keeps
        it from being deleted (with its shares) while a share of it is written."""
        repo = TenantRepository.for_kind(kind)
        if repo is None:
            raise RuntimeError(f"no repository for {kind}")
        if not await repo(session, tenant, viewer=viewer).lock_visible(record_id, for_update=False):
            raise record_not_found(kind, record_id)

    async def grant(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        kind: str,
        record_id: UUID,
        body: ShareCreate,
        *,
        viewer: UUID | None,
        granted_by: UUID | None,
    ) -> ShareRow:
        await self._lock_record(session, tenant, kind, record_id, viewer)
        field = "user_id" if body.user_id is not None else "team_id"
        await user_service.require_active(session, tenant, body.user_id or body.team_id, field)
        shares = ShareRepository(session, tenant)
        if await shares.find(kind, record_id, user_id=body.user_id, team_id=body.team_id):
            # A racing duplicate is stopped by the unique index (also 409).
            raise Conflict(f"The {kind} is already shared with this {field.removesuffix('_id')}.")
        return await shares.insert(
            {
                "id": new_id(),
                "record_kind": kind,
                "record_id": record_id,
                "user_id": body.user_id,
                "team_id": body.team_id,
                "created_by": granted_by,
            }
        )

    async def revoke(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        kind: str,
        record_id: UUID,
        share_id: UUID,
        *,
        viewer: UUID | None,
    ) -> None:
        await self._lock_record(session, tenant, kind, record_id, viewer)
        if not await ShareRepository(session, tenant).revoke(kind, record_id, share_id):
            raise NotFound(f"No share {share_id} of {kind} {record_id}.")


sharing = SharingService()
