"""Lead rules: sensitive fields sealed, the owner an active user, the score kept by the
tenant's rules (on every write of the lead, and when an activity is logged on it), a
converted lead read-only; conversion creates or links an account, a contact and
optionally an opportunity through their own services, in the caller's transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from meridian.accounts.repository import AccountRepository
from meridian.accounts.schemas import AccountCreate
from meridian.accounts.service import account as account_service
from meridian.contacts.repository import ContactRepository
from meridian.contacts.schemas import ContactCreate
from meridian.contacts.service import contact as contact_service
from meridian.crud import batch, hooks
from meridian.crud.repository import VersionMismatch
from meridian.encryption import service as encryption
from meridian.encryption.fields import open_row
from meridian.errors import NOT_FOUND, Conflict, invalid_field
from meridian.ids import new_id
from meridian.leads import scoring
from meridian.leads.models import LeadRow, LeadScoringRuleRow
from meridian.leads.repository import LeadRepository, ScoringRuleRepository
from meridian.leads.schemas import (
    LeadConvert,
    LeadCreate,
    LeadUpdate,
    ScoringRuleCreate,
    ScoringRuleUpdate,
)
from meridian.opportunities.schemas import OpportunityCreate
from meridian.opportunities.service import opportunity as opportunity_service
from meridian.users.service import user as user_service
from tenancy.context import TenantContext
from tenancy.keyring import TenantKeyring

KIND = "lead"
SEALED = ("email_enc", "phone_enc")
# Leads rescored per transaction when a tenant's rules change.
RESCORE_BATCH = 500


class ConvertedLead(Conflict):
    type_slug = "lead-converted"
    title = "The lead has been converted"


class LeadService:
    async def create(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        body: LeadCreate,
        keyring: TenantKeyring,
    ) -> LeadRow:
        repo = LeadRepository(session, tenant)
        values = body.model_dump()
        await user_service.require_active(session, tenant, values["owner_id"], "owner_id")
        row_id = new_id()
        stored = await encryption.for_insert(keyring, tenant.tenant_id, KIND, row_id, values)
        # A new lead has no activities yet.
        score, details = scoring.evaluate(stored, {}, await repo.rules())
        return await repo.insert({"id": row_id, **stored, "score": score, "score_details": details})

    async def update(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        lead_id: UUID,
        body: LeadUpdate,
        expected_version: int | None,
        keyring: TenantKeyring,
    ) -> LeadRow | None:
        repo = LeadRepository(session, tenant)
        current = await repo.locked(lead_id)
        if current is None:
            return None
        if expected_version is not None and current["version"] != expected_version:
            raise VersionMismatch
        if current["status"] == "converted":
            raise ConvertedLead(
                f"Lead {lead_id} was converted on {current['converted_at']:%Y-%m-%d}; "
                "it is kept as it was. Change the account, contact or opportunity instead."
            )
        values = body.changes()
        await user_service.require_active(session, tenant, values.get("owner_id"), "owner_id")
        stored = (
            {c: current[c] for c in SEALED} if encryption.touches_sensitive(KIND, values) else None
        )
        values = await encryption.for_update(
            keyring, tenant.tenant_id, KIND, lead_id, values, stored
        )
        counts = (await repo.activity_counts([lead_id])).get(lead_id, {})
        score, details = scoring.evaluate({**current, **values}, counts, await repo.rules())
        if scoring.changed(current, score, details):
            values = {**values, "score": score, "score_details": details}
        return await repo.update(lead_id, values, expected_version=expected_version)

    async def rescore(
        self, session: AsyncSession, tenant: TenantContext, lead_ids: Sequence[UUID]
    ) -> int:
        """Score ``lead_ids`` again (rules or activities changed); the leads whose score
        or explanation changes are updated (one ``lead.updated`` event each). Returns how
        many changed."""
        if not lead_ids:
            return 0
        repo = LeadRepository(session, tenant)
        rules = await repo.rules()
        leads = await repo.scored(lead_ids)
        counts = await repo.activity_counts([lead["id"] for lead in leads])
        changed = 0
        for lead in leads:
            score, details = scoring.evaluate(lead, counts.get(lead["id"], {}), rules)
            if lead["status"] == "converted" or not scoring.changed(lead, score, details):
                continue  # a converted lead keeps the score it was converted with
            await repo.update(
                lead["id"], {"score": score, "score_details": details}, expected_version=None
            )
            changed += 1
        return changed

    async def rescore_page(
        self, session: AsyncSession, tenant: TenantContext, after: UUID | None
    ) -> tuple[int, UUID | None]:
        """One batch of a tenant-wide rescoring: the leads after ``after`` in id order.
        Returns how many changed and where the next batch starts (None: done)."""
        ids = await LeadRepository(session, tenant).page_of_ids(after, RESCORE_BATCH)
        changed = await self.rescore(session, tenant, ids)
        return changed, (ids[-1] if len(ids) == RESCORE_BATCH else None)

    # -- conversion ----------------------------------------------------------------------
    async def convert(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        lead_id: UUID,
        body: LeadConvert,
        keyring: TenantKeyring,
        *,
        viewer: UUID | None,
    ) -> dict[str, Any] | None:
        """The lead's conversion (None: no such lead in the caller's scope). Converting
        a converted lead again changes nothing and answers what it became."""
        repo = LeadRepository(session, tenant, viewer=viewer)
        lead = await repo.locked(lead_id)
        if lead is None:
            return None
        if lead["status"] == "converted":
            return _conversion(lead, converted_now=False)
        owner = body.owner_id if "owner_id" in body.model_fields_set else lead["owner_id"]
        clear = await open_row(keyring, tenant.tenant_id, KIND, lead, reveal=True)
        account_id = body.account_id
        if account_id is not None:
            await _require_visible(AccountRepository(session, tenant, viewer=viewer), account_id)
        else:
            name = body.account_name or clear["company"] or _full_name(clear)
            account = await account_service.create(
                session, tenant, AccountCreate(name=name, owner_id=owner), keyring
            )
            account_id = account["id"]
        contact_id = body.contact_id
        if contact_id is not None:
            await _require_visible(ContactRepository(session, tenant, viewer=viewer), contact_id)
        else:
            new_contact = ContactCreate(
                first_name=clear["first_name"],
                last_name=clear["last_name"],
                email=clear["email"],
                phone=clear["phone"],
                title=clear["title"],
                account_id=account_id,
                owner_id=owner,
            )
            contact = await contact_service.create(session, tenant, new_contact, keyring)
            contact_id = contact["id"]
        opportunity_id = None
        if body.opportunity is not None:
            deal = body.opportunity.model_dump(exclude_none=True)
            opportunity = await opportunity_service.create(
                session,
                tenant,
                OpportunityCreate(**deal, account_id=account_id, owner_id=owner),
            )
            opportunity_id = opportunity["id"]
        now = await session.scalar(select(func.now()))
        converted = await repo.update(
            lead_id,
            {
                "status": "converted",
                "converted_at": now,
                "converted_account_id": account_id,
                "converted_contact_id": contact_id,
                "converted_opportunity_id": opportunity_id,
            },
            expected_version=None,
        )
        assert converted is not None  # locked above
        return _conversion(converted, converted_now=True)


def _full_name(lead: Mapping[str, Any]) -> str:
    return " ".join(p for p in (lead["first_name"], lead["last_name"]) if p)


async def _require_visible(repo: AccountRepository | ContactRepository, record_id: UUID) -> None:
    # Linking needs the record in the caller's scope; it is locked against deletion.
    if not await repo.lock_visible(record_id, for_update=False):
        kind = repo.model.__tablename__
        raise invalid_field(f"{kind}_id", f"no {kind} with id {record_id}", NOT_FOUND)


def _conversion(lead: Mapping[str, Any], *, converted_now: bool) -> dict[str, Any]:
    return {
        "lead": dict(lead),
        "account_id": lead["converted_account_id"],
        "contact_id": lead["converted_contact_id"],
        "opportunity_id": lead["converted_opportunity_id"],
        "converted_now": converted_now,
    }


class ScoringRuleService:
    """Rules are plain records; the worker rescores the tenant's leads after each change
    (``meridian.leads.worker``), from the rule's event."""

    async def create(
        self, session: AsyncSession, tenant: TenantContext, body: ScoringRuleCreate
    ) -> LeadScoringRuleRow:
        values = body.model_dump(mode="json")
        return await ScoringRuleRepository(session, tenant).insert({"id": new_id(), **values})

    async def update(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        rule_id: UUID,
        body: ScoringRuleUpdate,
        expected_version: int | None,
    ) -> LeadScoringRuleRow | None:
        values = body.model_dump(mode="json", include=set(body.changes()))
        return await ScoringRuleRepository(session, tenant).update(
            rule_id, values, expected_version=expected_version
        )


async def _activity_logged(
    session: AsyncSession, tenant: TenantContext, written: hooks.Written
) -> None:
    # An activity on a lead can change its score (activity-count rules).
    lead_id = written.row.get("lead_id")
    if written.kind == "activity" and written.action == "created" and lead_id is not None:
        await lead.rescore(session, tenant, [lead_id])


lead = LeadService()


def writes(
    tenant: TenantContext, keyring: TenantKeyring, allow_duplicate: bool = False
) -> batch.Writes[LeadCreate, LeadUpdate]:
    """The leads' writes as the batch flow takes them (``POST /v1/leads/batch``, an
    import's rows): this service's own create and update, so an item is checked and
    stored exactly as a single ``POST`` or ``PATCH``."""
    return batch.Writes(
        KIND,
        "leads",
        LeadRepository,
        LeadCreate,
        LeadUpdate,
        create=lambda session, new: lead.create(session, tenant, new, keyring),
        update=lambda session, record_id, changes, version: lead.update(
            session, tenant, record_id, changes, version, keyring
        ),
    )


scoring_rule = ScoringRuleService()
hooks.on_write("leads.score-on-activity", _activity_logged)
