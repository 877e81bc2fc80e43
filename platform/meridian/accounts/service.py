"""Account rules: the hierarchy must stay a tree; the owner is an active user."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from meridian.accounts.repository import AccountRepository
from meridian.accounts.schemas import AccountCreate, AccountUpdate
from meridian.errors import ValidationFailed
from meridian.ids import new_id
from meridian.users.service import user as user_service
from tenancy.context import TenantContext


class AccountService:
    async def create(
        self, session: AsyncSession, tenant: TenantContext, body: AccountCreate
    ) -> dict[str, Any]:
        values = body.changes()
        await user_service.require_active(session, tenant, values.get("owner_id"), "owner_id")
        return await AccountRepository(session, tenant).insert({"id": new_id(), **values})

    async def update(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        account_id: UUID,
        body: AccountUpdate,
        expected_version: int | None,
    ) -> dict[str, Any] | None:
        repo = AccountRepository(session, tenant)
        values = body.changes()
        if "name" in values and values["name"] is None:
            raise ValidationFailed("name: cannot be null")
        parent = values.get("parent_id")
        if parent is not None and await repo.ancestors_include(parent, account_id):
            raise ValidationFailed("parent_id: an account cannot be its own ancestor")
        await user_service.require_active(session, tenant, values.get("owner_id"), "owner_id")
        return await repo.update(account_id, values, expected_version=expected_version)


account = AccountService()
