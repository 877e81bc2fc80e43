"""Contact storage: the shared tenant repository plus the reference checks it needs."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import Integer, bindparam, func, select

from meridian.accounts.models import Account
from meridian.contacts.models import Contact, ContactRow
from meridian.crud.filters import FilterField, sealed_field
from meridian.crud.repository import TenantRepository

SORTABLE = {
    "last_name": Contact.last_name,
    "created_at": Contact.created_at,
    "updated_at": Contact.updated_at,
}
# What ?filter= may name (meridian.crud.filters); email, phone and tax id are sealed:
# equality only, through their blind indexes.
FILTERABLE = {
    "id": FilterField(Contact.id, "uuid"),
    "first_name": FilterField(Contact.first_name, "text"),
    "last_name": FilterField(Contact.last_name, "text"),
    "title": FilterField(Contact.title, "text"),
    "account_id": FilterField(Contact.account_id, "uuid"),
    "owner_id": FilterField(Contact.owner_id, "uuid"),
    "external_id": FilterField(Contact.external_id, "text"),
    "created_at": FilterField(Contact.created_at, "datetime"),
    "updated_at": FilterField(Contact.updated_at, "datetime"),
    "email": sealed_field(max_length=320),
    "phone": sealed_field(max_length=40),
    "tax_id": sealed_field(max_length=40),
}


# The advisory lock space of contacts' emails (a duplicate check takes one per email).
DUPLICATE_LOCK = 0x44555045
_LOCK_EMAIL = select(
    func.pg_advisory_xact_lock(bindparam("space", type_=Integer), bindparam("key", type_=Integer))
)
# Any one of them (no ORDER BY: ordered by id, the planner may walk the tenant's
# contacts in id order looking for the email, every contact when there is none).
_WITH_EMAIL_INDEX = (
    select(Contact.id)
    .where(
        Contact.tenant_id == bindparam("tenant_id"),
        Contact.email_bidx.in_(bindparam("indexes", expanding=True)),
    )
    .limit(1)
)


class ContactRepository(TenantRepository[ContactRow]):
    model = Contact
    # Blind indexes serve searches only; the key version is in each ciphertext's header.
    hidden = TenantRepository.hidden | {"email_bidx", "phone_bidx", "tax_id_bidx", "enc_version"}

    async def with_email_index(self, indexes: list[bytes], lock: int) -> UUID | None:
        """A contact of the tenant (any, whatever the caller's record scope: duplicates
        are a property of the tenant's data) whose email has one of these blind indexes,
        looked for under the transaction's advisory lock ``lock`` of the email (so two
        writers of one email look one after the other)."""
        # Core statements built once, on the session's connection: every new contact
        # of a batch or an import runs them, and building and ORM-compiling them cost
        # more than the database took (half an import's time). The tenant is in the
        # statement (and row-level security holds it there).
        conn = await self.session.connection()
        await conn.execute(_LOCK_EMAIL, {"space": DUPLICATE_LOCK, "key": lock})
        found: UUID | None = (
            await conn.execute(_WITH_EMAIL_INDEX, {"tenant_id": self.tenant_id, "indexes": indexes})
        ).scalar()
        return found

    async def version_of(self, contact_id: UUID) -> int | None:
        """The current version, locking the row for the update that follows."""
        stmt = (
            select(Contact.version)
            .where(self.scoped(), Contact.id == contact_id)
            .with_for_update(key_share=True)
        )
        version: int | None = await self.session.scalar(stmt)
        return version

    async def account_exists(self, account_id: UUID) -> bool:
        return await self.reference_exists(Account, account_id)
