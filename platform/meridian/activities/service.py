"""Activity rules: every link must exist in the tenant; the account is derived when
the opportunity, case or contact has one, so an account's timeline is one indexed query. The
owner is an active user of the tenant."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from meridian.activities.models import ActivityRow
from meridian.activities.repository import LINKS, ActivityRepository
from meridian.activities.schemas import ActivityCreate
from meridian.errors import NOT_FOUND, invalid_field
from meridian.ids import new_id
from meridian.users.service import user as user_service
from tenancy.context import TenantContext


def _noun(field: str) -> str:
    return field.removesuffix("_id")


class ActivityService:
    async def create(
        self, session: AsyncSession, tenant: TenantContext, body: ActivityCreate
    ) -> ActivityRow:
        repo = ActivityRepository(session, tenant)
        values = body.model_dump()
        await user_service.require_active(session, tenant, values["owner_id"], "owner_id")
        accounts: dict[str, UUID | None] = {}
        for field in LINKS:
            record_id = values[field]
            if record_id is None:
                continue
            found = await repo.linked(field, record_id)
            if found is None:
                message = f"no {_noun(field)} with id {record_id}"
                raise invalid_field(field, message, NOT_FOUND)
            accounts[field] = found.account_id
        if values["account_id"] is None:
            # The opportunity's account first: it is required there and the activity is
            # about the deal; a contact's account is the fallback.
            values["account_id"] = (
                accounts.get("opportunity_id")
                or accounts.get("case_id")
                or accounts.get("contact_id")
            )
        return await repo.insert({"id": new_id(), **values})


activity = ActivityService()
