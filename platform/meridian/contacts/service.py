"""Contact rules: the linked account must be one of the tenant's own, the owner an
active user of the tenant."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from meridian.contacts.repository import ContactRepository
from meridian.contacts.schemas import ContactCreate, ContactUpdate
from meridian.crud.repository import VersionMismatch
from meridian.errors import ValidationFailed
from meridian.ids import new_id
from meridian.users.service import user as user_service
from tenancy.context import TenantContext

NOT_NULL = ("first_name", "last_name")


class ContactService:
    async def create(
        self, session: AsyncSession, tenant: TenantContext, body: ContactCreate
    ) -> dict[str, Any]:
        repo = ContactRepository(session, tenant)
        values = body.model_dump()
        await self._check_account(repo, values["account_id"])
        await user_service.require_active(session, tenant, values["owner_id"], "owner_id")
        return await repo.insert({"id": new_id(), **values})

    async def update(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        contact_id: UUID,
        body: ContactUpdate,
        expected_version: int | None,
    ) -> dict[str, Any] | None:
        repo = ContactRepository(session, tenant)
        values = body.changes()
        for field in NOT_NULL:
            if field in values and values[field] is None:
                raise ValidationFailed(f"{field}: cannot be null")
        if values.get("account_id") is not None or values.get("owner_id") is not None:
            # An unknown contact is 404 and a stale ETag 412 before any complaint
            # about the body's references.
            version = await repo.version_of(contact_id)
            if version is None:
                return None
            if expected_version is not None and version != expected_version:
                raise VersionMismatch
            await self._check_account(repo, values.get("account_id"))
            await user_service.require_active(session, tenant, values.get("owner_id"), "owner_id")
        return await repo.update(contact_id, values, expected_version=expected_version)

    async def _check_account(self, repo: ContactRepository, account_id: UUID | None) -> None:
        if account_id is not None and not await repo.account_exists(account_id):
            raise ValidationFailed(f"account_id: no account {account_id}")


contact = ContactService()
