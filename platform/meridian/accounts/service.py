"""Account rules: the hierarchy must stay a tree; the owner is an active user; the tax
id is stored encrypted."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from meridian.accounts.models import AccountRow
from meridian.accounts.repository import AccountRepository
from meridian.accounts.schemas import AccountCreate, AccountUpdate
from meridian.crud import batch
from meridian.encryption import service as encryption
from meridian.errors import Conflict
from meridian.ids import new_id
from meridian.users.service import user as user_service
from tenancy.context import TenantContext
from tenancy.keyring import TenantKeyring

KIND = "account"


class AccountService:
    async def create(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        body: AccountCreate,
        keyring: TenantKeyring,
    ) -> AccountRow:
        values = body.changes()
        await user_service.require_active(session, tenant, values.get("owner_id"), "owner_id")
        row_id = new_id()
        stored = await encryption.for_insert(keyring, tenant.tenant_id, KIND, row_id, values)
        return await AccountRepository(session, tenant).insert({"id": row_id, **stored})

    async def update(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        account_id: UUID,
        body: AccountUpdate,
        expected_version: int | None,
        keyring: TenantKeyring,
    ) -> AccountRow | None:
        repo = AccountRepository(session, tenant)
        values = body.changes()
        parent = values.get("parent_id")
        if parent is not None and await repo.ancestors_include(parent, account_id):
            raise Conflict("parent_id: an account cannot be its own ancestor")
        await user_service.require_active(session, tenant, values.get("owner_id"), "owner_id")
        stored = None
        if encryption.touches_sensitive(KIND, values):
            stored = await repo.lock_sealed(account_id, ("tax_id_enc",))
            if stored is None:
                return None
        values = await encryption.for_update(
            keyring, tenant.tenant_id, KIND, account_id, values, stored
        )
        return await repo.update(account_id, values, expected_version=expected_version)


account = AccountService()


def writes(
    tenant: TenantContext, keyring: TenantKeyring, allow_duplicate: bool = False
) -> batch.Writes[AccountCreate, AccountUpdate]:
    """The accounts' writes as the batch flow takes them (``POST /v1/accounts/batch``, an
    import's rows): this service's own create and update, so an item is checked and
    stored exactly as a single ``POST`` or ``PATCH``."""
    return batch.Writes(
        KIND,
        "accounts",
        AccountRepository,
        AccountCreate,
        AccountUpdate,
        create=lambda session, new: account.create(session, tenant, new, keyring),
        update=lambda session, record_id, changes, version: account.update(
            session, tenant, record_id, changes, version, keyring
        ),
    )
