"""Activities, and the records they link to (contacts, accounts, opportunities, leads,
cases)."""

from __future__ import annotations

from typing import Any, NamedTuple
from uuid import UUID

import asyncpg
from sqlalchemy import Select, select
from sqlalchemy.orm import InstrumentedAttribute

from meridian.accounts.models import Account
from meridian.accounts.repository import AccountRepository
from meridian.activities.models import Activity, ActivityRow
from meridian.cases.models import Case
from meridian.cases.repository import CaseRepository
from meridian.contacts.models import Contact
from meridian.contacts.repository import ContactRepository
from meridian.crud.compiled import fetchrow
from meridian.crud.pagination import Cursor, Sort
from meridian.crud.repository import TenantRepository
from meridian.leads.models import Lead
from meridian.leads.repository import LeadRepository
from meridian.opportunities.models import Opportunity
from meridian.opportunities.repository import OpportunityRepository

SORTABLE = {
    "occurred_at": Activity.occurred_at,
    "created_at": Activity.created_at,
}


class _Link(NamedTuple):
    model: type[Any]
    # The account a record of this kind belongs to (an account is its own; a lead has
    # none until it is converted, and its activities stay its own).
    account: InstrumentedAttribute[Any] | None
    # The activity column holding a link of this kind.
    column: InstrumentedAttribute[Any]


LINKS: dict[str, _Link] = {
    "contact_id": _Link(Contact, Contact.account_id, Activity.contact_id),
    "account_id": _Link(Account, Account.id, Activity.account_id),
    "opportunity_id": _Link(Opportunity, Opportunity.account_id, Activity.opportunity_id),
    "lead_id": _Link(Lead, None, Activity.lead_id),
    "case_id": _Link(Case, Case.account_id, Activity.case_id),
}


class LinkedRecord(NamedTuple):
    account_id: UUID | None


def _linked_statement(tenant_id: UUID, field: str, record_id: UUID) -> Select[Any]:
    link = LINKS[field]
    account = link.account if link.account is not None else link.model.id
    return select(account).where(link.model.tenant_id == tenant_id, link.model.id == record_id)


class ActivityRepository(TenantRepository[ActivityRow]):
    model = Activity

    async def linked(self, field: str, record_id: UUID) -> LinkedRecord | None:
        """The record a link field names, if it exists in this tenant, with its account."""
        stmt = _linked_statement(self.tenant_id, field, record_id)
        row = (await self.session.execute(stmt)).first()
        if row is None:
            return None
        return LinkedRecord(row[0] if LINKS[field].account is not None else None)

    # -- timelines, on the raw read path (ShardRouter.reader) ---------------------------
    @classmethod
    async def fetch_timeline(
        cls,
        conn: asyncpg.Connection,
        tenant_id: UUID,
        field: str,
        parent_id: UUID,
        *,
        viewer: UUID | None,
        sort: Sort,
        limit: int,
        cursor: Cursor | None,
    ) -> list[ActivityRow] | None:
        """Activities linked to a contact, account, opportunity, lead or case (``field``)
        that ``viewer`` may see, up to ``limit + 1``; None when the record does not exist
        in the tenant or is out of the viewer's scope (the same 404 either way)."""
        parent = PARENT_REPOSITORIES[field]
        if viewer is not None and parent.is_scoped_for(viewer):
            if await parent.fetch_visible(conn, tenant_id, parent_id, viewer) is None:
                return None
        elif await fetchrow(conn, _linked_statement(tenant_id, field, parent_id)) is None:
            return None
        return await cls.fetch_scoped_page(
            conn,
            tenant_id,
            viewer,
            where=[LINKS[field].column == parent_id],
            sort=sort,
            limit=limit,
            cursor=cursor,
        )


# The repositories of the records a timeline hangs off, for their scope checks.
PARENT_REPOSITORIES: dict[str, type[TenantRepository[Any]]] = {
    "contact_id": ContactRepository,
    "account_id": AccountRepository,
    "opportunity_id": OpportunityRepository,
    "lead_id": LeadRepository,
    "case_id": CaseRepository,
}
