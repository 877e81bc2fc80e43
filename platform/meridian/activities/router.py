"""Activities (``/v1/activities``) and the timelines of contacts, accounts,
opportunities, leads and cases (``timeline_router``, no prefix).

Activities are immutable: there is no PATCH or DELETE (the database role cannot update
or delete them either), and their ETag is a constant because the representation never
changes. A timeline is newest first by ``(occurred_at, id)``, keyset paginated.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from meridian.activities.models import Activity
from meridian.activities.repository import SORTABLE, ActivityRepository
from meridian.activities.schemas import ActivityCreate, ActivityRead, ActivityType
from meridian.activities.service import activity as activity_service
from meridian.crud import endpoints
from meridian.crud.http import (
    CursorQuery,
    IdempotencyKeyHeader,
    IfNoneMatchHeader,
    LimitQuery,
    page_response,
    sort_query,
)
from meridian.crud.pagination import Cursor, Sort, check_limit, filters_digest, parse_sort
from meridian.crud.schemas import IsoDateTime, Page
from meridian.deps import (
    CanCreateActivities,
    CanReadActivities,
    TenantAccess,
    record_viewer,
)
from meridian.errors import NotFound

router = APIRouter(prefix="/v1/activities", tags=["activities"])
timeline_router = APIRouter(tags=["activities"])
KIND = "activity"
# Strong and constant: an activity's representation never changes.
ETAG = '"1"'
NEWEST_FIRST = Sort("occurred_at", Activity.occurred_at, descending=True)


@router.post("", status_code=201, response_model=ActivityRead)
async def create_activity(
    body: ActivityCreate,
    request: Request,
    access: CanCreateActivities,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """At least one of contact_id, account_id, opportunity_id, lead_id, case_id; each
    must exist. Without account_id, the opportunity's (else the case's, else the
    contact's) account is recorded. An activity on a lead counts towards its score."""
    return await endpoints.create(
        access,
        request,
        idempotency_key,
        body,
        lambda session: activity_service.create(session, access.tenant, body),
        tag=lambda _row: ETAG,  # no version column: the ETag is constant
    )


@router.get("", response_model=Page[ActivityRead])
async def list_activities(
    access: CanReadActivities,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    sort: Annotated[str | None, sort_query(SORTABLE, "-occurred_at")] = None,
    type_: Annotated[ActivityType | None, Query(alias="type")] = None,
    contact_id: UUID | None = None,
    account_id: UUID | None = None,
    opportunity_id: UUID | None = None,
    lead_id: UUID | None = None,
    case_id: UUID | None = None,
    owner_id: UUID | None = None,
    occurred_after: Annotated[
        IsoDateTime | None, Query(description="Inclusive lower bound (with a time zone).")
    ] = None,
    occurred_before: Annotated[
        IsoDateTime | None, Query(description="Exclusive upper bound (with a time zone).")
    ] = None,
) -> Response:
    """Sort: ``occurred_at``, ``created_at``; default ``-occurred_at`` (newest first)."""
    filters = {
        "type": type_,
        "contact_id": contact_id,
        "account_id": account_id,
        "opportunity_id": opportunity_id,
        "lead_id": lead_id,
        "case_id": case_id,
        "owner_id": owner_id,
    }
    where = [getattr(Activity, k) == v for k, v in filters.items() if v is not None]
    if occurred_after is not None:
        where.append(Activity.occurred_at >= occurred_after)
    if occurred_before is not None:
        where.append(Activity.occurred_at < occurred_before)
    return await endpoints.listing(
        access,
        ActivityRepository,
        where=where,
        filters={
            **filters,
            "occurred_after": occurred_after,
            "occurred_before": occurred_before,
        },
        sort=parse_sort(sort, SORTABLE, "-occurred_at"),
        limit=limit,
        cursor=cursor,
    )


@router.get("/{activity_id}", response_model=ActivityRead)
async def get_activity(
    activity_id: UUID, access: CanReadActivities, if_none_match: IfNoneMatchHeader = None
) -> Response:
    return await endpoints.fetch(
        access, ActivityRepository, KIND, activity_id, if_none_match, tag=ETAG
    )


async def _timeline(
    access: TenantAccess, field: str, parent_id: UUID, limit: int | None, cursor: str | None
) -> Response:
    size = check_limit(limit)
    # The parent is part of the digest: a cursor works only on the timeline it came from.
    digest = filters_digest(access.tenant.tenant_id, {field: parent_id})
    after = Cursor.decode(cursor, sort=NEWEST_FIRST, digest=digest) if cursor else None
    tenant_id, viewer = access.tenant.tenant_id, record_viewer(access)
    rows = await endpoints.read(
        access,
        lambda conn: ActivityRepository.fetch_timeline(
            conn,
            tenant_id,
            field,
            parent_id,
            viewer=viewer,
            sort=NEWEST_FIRST,
            limit=size,
            cursor=after,
        ),
    )
    if rows is None:
        raise NotFound(f"No {field.removesuffix('_id')} with id {parent_id}.")
    return page_response(rows, limit=size, sort=NEWEST_FIRST, digest=digest)


@timeline_router.get("/v1/contacts/{contact_id}/timeline", response_model=Page[ActivityRead])
async def get_contact_timeline(
    contact_id: UUID, access: CanReadActivities, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> Response:
    """The contact's activities, newest first."""
    return await _timeline(access, "contact_id", contact_id, limit, cursor)


@timeline_router.get("/v1/accounts/{account_id}/timeline", response_model=Page[ActivityRead])
async def get_account_timeline(
    account_id: UUID, access: CanReadActivities, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> Response:
    """The account's activities, newest first, including those of its contacts and
    opportunities (their account is recorded on the activity when it is created)."""
    return await _timeline(access, "account_id", account_id, limit, cursor)


@timeline_router.get(
    "/v1/opportunities/{opportunity_id}/timeline", response_model=Page[ActivityRead]
)
async def get_opportunity_timeline(
    opportunity_id: UUID,
    access: CanReadActivities,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Response:
    """The opportunity's activities, newest first."""
    return await _timeline(access, "opportunity_id", opportunity_id, limit, cursor)


@timeline_router.get("/v1/leads/{lead_id}/timeline", response_model=Page[ActivityRead])
async def get_lead_timeline(
    lead_id: UUID, access: CanReadActivities, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> Response:
    """The lead's activities, newest first (they stay the lead's after its conversion)."""
    return await _timeline(access, "lead_id", lead_id, limit, cursor)


@timeline_router.get("/v1/cases/{case_id}/timeline", response_model=Page[ActivityRead])
async def get_case_timeline(
    case_id: UUID, access: CanReadActivities, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> Response:
    """The case's activities, newest first: the calls, emails and notes of working it
    (its field changes are at ``/v1/cases/{id}/history``)."""
    return await _timeline(access, "case_id", case_id, limit, cursor)
