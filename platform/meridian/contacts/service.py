"""Contact rules: the linked account must be one of the tenant's own, the owner an
active user of the tenant; sensitive fields are stored encrypted, and a new contact
whose email is already on file is refused as a duplicate unless asked for."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from meridian.contacts.models import ContactRow
from meridian.contacts.repository import ContactRepository
from meridian.contacts.schemas import ContactCreate, ContactUpdate
from meridian.crud import batch
from meridian.crud.repository import VersionMismatch
from meridian.encryption import service as encryption
from meridian.encryption.fields import search_indexes
from meridian.errors import NOT_FOUND, Duplicate, invalid_field
from meridian.ids import new_id
from meridian.users.service import user as user_service
from tenancy.context import TenantContext
from tenancy.keyring import TenantKeyring

KIND = "contact"
SEALED = ("email_enc", "phone_enc", "tax_id_enc")
# Advisory-lock namespace of duplicate checks ("DUPE"): two creations of one address
# in one tenant are serialised, so both cannot pass the check.


class ContactService:
    async def create(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        body: ContactCreate,
        keyring: TenantKeyring,
        *,
        allow_duplicate: bool = False,
    ) -> ContactRow:
        repo = ContactRepository(session, tenant)
        values = body.model_dump()
        await self._check_account(repo, values["account_id"])
        await user_service.require_active(session, tenant, values["owner_id"], "owner_id")
        if values["email"] is not None and not allow_duplicate:
            await self._check_duplicate(session, repo, keyring, values["email"])
        row_id = new_id()
        stored = await encryption.for_insert(keyring, tenant.tenant_id, KIND, row_id, values)
        return await repo.insert({"id": row_id, **stored})

    async def _check_duplicate(
        self, session: AsyncSession, repo: ContactRepository, keyring: TenantKeyring, email: str
    ) -> None:
        # Every live version's index: a duplicate written before a rotation counts too.
        indexes = await search_indexes(keyring, repo.tenant_id, KIND, "email", email)
        if not indexes:
            return
        lock = int.from_bytes(indexes[-1][:4], "big", signed=True)
        existing = await repo.with_email_index(indexes, lock)
        if existing is not None:
            raise Duplicate(
                "A contact with this email exists; send allow_duplicate=true to create "
                "another one anyway.",
                duplicate_of=str(existing),
            )

    async def update(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        contact_id: UUID,
        body: ContactUpdate,
        expected_version: int | None,
        keyring: TenantKeyring,
    ) -> ContactRow | None:
        repo = ContactRepository(session, tenant)
        values = body.changes()
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
        stored = None
        if encryption.touches_sensitive(KIND, values):
            stored = await repo.lock_sealed(contact_id, SEALED)
            if stored is None:
                return None
        values = await encryption.for_update(
            keyring, tenant.tenant_id, KIND, contact_id, values, stored
        )
        return await repo.update(contact_id, values, expected_version=expected_version)

    async def _check_account(self, repo: ContactRepository, account_id: UUID | None) -> None:
        if account_id is not None and not await repo.account_exists(account_id):
            raise invalid_field("account_id", f"no account {account_id}", NOT_FOUND)


contact = ContactService()


def writes(
    tenant: TenantContext, keyring: TenantKeyring, allow_duplicate: bool = False
) -> batch.Writes[ContactCreate, ContactUpdate]:
    """The contacts' writes as the batch flow takes them (``POST /v1/contacts/batch``, an
    import's rows): this service's own create and update, so an item is checked and
    stored exactly as a single ``POST`` or ``PATCH``. ``allow_duplicate``: a contact
    whose email is on file is created anyway."""
    return batch.Writes(
        KIND,
        "contacts",
        ContactRepository,
        ContactCreate,
        ContactUpdate,
        create=lambda session, new: contact.create(
            session, tenant, new, keyring, allow_duplicate=allow_duplicate
        ),
        update=lambda session, record_id, changes, version: contact.update(
            session, tenant, record_id, changes, version, keyring
        ),
    )
