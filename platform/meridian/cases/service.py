"""Case rules: the contact and account must be the tenant's own (the account defaults
to the contact's), the owner an active user; the due time defaults to the priority's
service level; resolving or closing a case needs a resolution and stamps when, and
reopening it clears those stamps."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, cast
from uuid import UUID

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from meridian.cases.models import CLOSED_STATUSES, CaseRow
from meridian.cases.repository import CaseRepository
from meridian.cases.schemas import CaseCreate, CaseUpdate
from meridian.crud import batch
from meridian.crud.repository import VersionMismatch
from meridian.errors import NOT_FOUND, invalid_field
from meridian.ids import new_id
from meridian.users.service import user as user_service
from tenancy.context import TenantContext
from tenancy.keyring import TenantKeyring

# The default service level: how long after creation a case of each priority is due.
SLA = {
    "urgent": timedelta(hours=4),
    "high": timedelta(days=1),
    "normal": timedelta(days=3),
    "low": timedelta(days=7),
}


class CaseService:
    async def create(
        self, session: AsyncSession, tenant: TenantContext, body: CaseCreate
    ) -> CaseRow:
        repo = CaseRepository(session, tenant)
        values = body.model_dump()
        await user_service.require_active(session, tenant, values["owner_id"], "owner_id")
        await self._check_links(repo, values)
        now = await _now(session)
        if values["due_at"] is None:
            values["due_at"] = now + SLA[values["priority"]]
        values.update(_stamps({}, values, now))
        return await repo.insert({"id": new_id(), **values})

    async def update(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        case_id: UUID,
        body: CaseUpdate,
        expected_version: int | None,
    ) -> CaseRow | None:
        repo = CaseRepository(session, tenant)
        current = await repo.locked(case_id)
        if current is None:
            return None
        if expected_version is not None and current["version"] != expected_version:
            raise VersionMismatch
        values = body.changes()
        await user_service.require_active(session, tenant, values.get("owner_id"), "owner_id")
        await self._check_links(repo, values)
        values.update(_stamps(current, {**current, **values}, await _now(session)))
        return await repo.update(case_id, values, expected_version=expected_version)

    async def _check_links(self, repo: CaseRepository, values: dict[str, Any]) -> None:
        contact_id = values.get("contact_id")
        if contact_id is not None:
            found, account_id = await repo.contact_account(contact_id)
            if not found:
                raise invalid_field("contact_id", f"no contact with id {contact_id}", NOT_FOUND)
            # A case about a contact is about its account, unless it names another.
            if values.get("account_id") is None and account_id is not None:
                values["account_id"] = account_id
        account_id = values.get("account_id")
        if account_id is not None and not await repo.account_exists(account_id):
            raise invalid_field("account_id", f"no account with id {account_id}", NOT_FOUND)


def _stamps(before: Mapping[str, Any], after: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """``resolved_at``/``closed_at`` for a case going from ``before`` to ``after``."""
    status, was = after["status"], before.get("status")
    if status in CLOSED_STATUSES and not after.get("resolution"):
        raise invalid_field("resolution", f"a {status} case needs its resolution", "missing")
    out: dict[str, Any] = {}
    if status not in CLOSED_STATUSES:
        if was in CLOSED_STATUSES:  # reopened
            out = {"resolved_at": None, "closed_at": None}
        return out
    if before.get("resolved_at") is None:
        out["resolved_at"] = now
    if status == "closed" and before.get("closed_at") is None:
        out["closed_at"] = now
    if status == "resolved" and before.get("closed_at") is not None:
        out["closed_at"] = None  # closed, then back to resolved
    return out


async def _now(session: AsyncSession) -> datetime:
    # The database's clock, the one created_at and updated_at come from.
    return cast(datetime, await session.scalar(select(func.now())))


case = CaseService()


def writes(
    tenant: TenantContext, keyring: TenantKeyring, allow_duplicate: bool = False
) -> batch.Writes[CaseCreate, CaseUpdate]:
    """The cases' writes as the batch flow takes them (``POST /v1/cases/batch``, an
    import's rows): this service's own create and update, so an item is checked and
    stored exactly as a single ``POST`` or ``PATCH``."""
    return batch.Writes(
        "case",
        "cases",
        CaseRepository,
        CaseCreate,
        CaseUpdate,
        create=lambda session, new: case.create(session, tenant, new),
        update=lambda session, record_id, changes, version: case.update(
            session, tenant, record_id, changes, version
        ),
    )
