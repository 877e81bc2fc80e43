"""Case storage, and the reads of contacts and accounts its rules need."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import select

from meridian.accounts.models import Account
from meridian.cases.models import CASE_ORIGINS, CASE_PRIORITIES, CASE_STATUSES, Case, CaseRow
from meridian.contacts.models import Contact
from meridian.crud.filters import FilterField
from meridian.crud.repository import TenantRepository

SORTABLE = {
    "due_at": Case.due_at,
    "priority": Case.priority,
    "created_at": Case.created_at,
    "updated_at": Case.updated_at,
}


# What ?filter= may name (meridian.crud.filters).
FILTERABLE = {
    "id": FilterField(Case.id, "uuid"),
    "subject": FilterField(Case.subject, "text"),
    "status": FilterField(Case.status, "enum", choices=CASE_STATUSES),
    "priority": FilterField(Case.priority, "enum", choices=CASE_PRIORITIES),
    "origin": FilterField(Case.origin, "enum", choices=CASE_ORIGINS),
    "contact_id": FilterField(Case.contact_id, "uuid"),
    "account_id": FilterField(Case.account_id, "uuid"),
    "owner_id": FilterField(Case.owner_id, "uuid"),
    "external_id": FilterField(Case.external_id, "text"),
    "due_at": FilterField(Case.due_at, "datetime"),
    "resolved_at": FilterField(Case.resolved_at, "datetime"),
    "closed_at": FilterField(Case.closed_at, "datetime"),
    "created_at": FilterField(Case.created_at, "datetime"),
    "updated_at": FilterField(Case.updated_at, "datetime"),
}


class CaseRepository(TenantRepository[CaseRow]):
    model = Case

    async def locked(self, case_id: UUID) -> dict[str, Any] | None:
        """The case, locked FOR NO KEY UPDATE for the change that follows; None when it
        is not in this repository's scope."""
        stmt = self.select_rows().where(Case.id == case_id).with_for_update(key_share=True)
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        return dict(row) if row is not None else None

    async def account_exists(self, account_id: UUID) -> bool:
        return await self.reference_exists(Account, account_id)

    async def contact_account(self, contact_id: UUID) -> tuple[bool, UUID | None]:
        """Whether the tenant has the contact (locked FOR KEY SHARE, as a foreign key
        check would), and its account."""
        stmt = (
            select(Contact.account_id)
            .where(Contact.tenant_id == self.tenant_id, Contact.id == contact_id)
            .with_for_update(read=True, key_share=True)
        )
        row = (await self.session.execute(stmt)).first()
        return (False, None) if row is None else (True, row[0])
