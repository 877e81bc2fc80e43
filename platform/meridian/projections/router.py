"""Interaction summaries over HTTP: a record's (``/v1/{contacts|accounts|opportunities}
/{id}/interactions``) and the list of a kind's (``/v1/interactions``).

A summary is read from its own table, never from the record caches or the records'
by-id and list statements, which stay as they are. It counts all of a record's
activities, whoever owns them: who may see the record may see its summary.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast
from uuid import UUID

from fastapi import APIRouter, Query
from sqlalchemy import ColumnElement
from sqlalchemy.orm import InstrumentedAttribute
from starlette.responses import Response

from meridian.crud import endpoints
from meridian.crud.http import CursorQuery, LimitQuery
from meridian.crud.pagination import Cursor, Sort, check_limit, filters_digest
from meridian.crud.schemas import IsoDateTime
from meridian.deps import (
    CanReadAccounts,
    CanReadActivities,
    CanReadContacts,
    CanReadOpportunities,
    TenantAccess,
    record_viewer,
)
from meridian.errors import Forbidden, NotFound
from meridian.projections import repository
from meridian.projections.models import (
    LAST_ACTIVITY_KEY,
    NEXT_TASK_KEY,
    TYPE_COLUMNS,
    InteractionSummary,
)
from meridian.projections.schemas import InteractionPage, InteractionSummaryRead, RecordKind
from meridian.web.responses import json_response

router = APIRouter(tags=["interactions"])
# The catalogue object whose read permission shows a kind's records.
OBJECT = {"contact": "contacts", "account": "accounts", "opportunity": "opportunities"}
ACTIVITIES = ("activities", "read")
SORTS: dict[str, Any] = {
    "last_activity_at": LAST_ACTIVITY_KEY,
    "activities_30d": InteractionSummary.activities_30d,
    "activities_90d": InteractionSummary.activities_90d,
    "next_task_due_at": NEXT_TASK_KEY,
}
SortToken = Literal[
    "last_activity_at",
    "-last_activity_at",
    "activities_30d",
    "-activities_30d",
    "activities_90d",
    "-activities_90d",
    "next_task_due_at",
    "-next_task_due_at",
]


def _require(access: TenantAccess, obj: str, act: str = "read") -> None:
    """A permission beyond the one the route declares (a summary is about a record and
    made of its activities: reading it takes both)."""
    if not access.can(obj, act):
        raise Forbidden(
            f"The role '{access.actor.role}' may not {act} {obj}.", object=obj, action=act
        )


def shown(kind: str, row: dict[str, Any]) -> dict[str, Any]:
    """A summary as the API shows it (zero counts where nothing was computed yet)."""

    def counts(window: str) -> dict[str, int]:
        return {t: row[f"{plural}_{window}"] or 0 for t, plural in TYPE_COLUMNS.items()}

    return {
        "record": {
            "kind": kind,
            "id": row["record_id"],
            "name": row["record_name"],
            "owner_id": row["record_owner_id"],
        },
        "last_activity_at": row["last_activity_at"],
        "last_activity_type": row["last_activity_type"],
        "last_activity_id": row["last_activity_id"],
        "activities_30d": row["activities_30d"] or 0,
        "activities_90d": row["activities_90d"] or 0,
        "by_type_30d": counts("30d"),
        "by_type_90d": counts("90d"),
        "next_task_id": row["next_task_id"],
        "next_task_due_at": row["next_task_due_at"],
        "computed_at": row["computed_at"],
    }


async def _one(access: TenantAccess, kind: str, record_id: UUID) -> Response:
    _require(access, *ACTIVITIES)
    tenant_id, viewer = access.tenant.tenant_id, record_viewer(access)
    row = await endpoints.read(
        access, lambda conn: repository.fetch_one(conn, tenant_id, kind, record_id, viewer)
    )
    if row is None:
        # The same 404 as reading the record: missing, another tenant's, or out of scope.
        raise NotFound(f"No {kind} with id {record_id}.")
    return json_response(shown(kind, row))


@router.get("/v1/contacts/{contact_id}/interactions", response_model=InteractionSummaryRead)
async def get_contact_interactions(contact_id: UUID, access: CanReadContacts) -> Response:
    """The contact's activities in short (needs activities:read too)."""
    return await _one(access, "contact", contact_id)


@router.get("/v1/accounts/{account_id}/interactions", response_model=InteractionSummaryRead)
async def get_account_interactions(account_id: UUID, access: CanReadAccounts) -> Response:
    """The account's activities in short, its contacts' and opportunities' included
    (needs activities:read too)."""
    return await _one(access, "account", account_id)


@router.get(
    "/v1/opportunities/{opportunity_id}/interactions", response_model=InteractionSummaryRead
)
async def get_opportunity_interactions(
    opportunity_id: UUID, access: CanReadOpportunities
) -> Response:
    """The opportunity's activities in short (needs activities:read too)."""
    return await _one(access, "opportunity", opportunity_id)


@router.get("/v1/interactions", response_model=InteractionPage)
async def list_interactions(
    access: CanReadActivities,
    kind: Annotated[
        RecordKind,
        Query(
            description="Whose summaries: contacts, accounts or opportunities (the "
            "caller needs that kind's read permission too)."
        ),
    ],
    sort: Annotated[
        SortToken,
        Query(
            description="The order; - first for descending. Records without a past "
            "activity sort as the oldest, without a next task as the latest."
        ),
    ] = "-last_activity_at",
    last_activity_before: Annotated[
        IsoDateTime | None, Query(description="Last activity before this time (exclusive).")
    ] = None,
    last_activity_after: Annotated[
        IsoDateTime | None, Query(description="Last activity at or after this time.")
    ] = None,
    min_activities_30d: Annotated[
        int | None,
        Query(ge=0, le=2**31 - 1, description="At least this many activities in 30 days."),
    ] = None,
    has_next_task: Annotated[
        bool | None, Query(description="Only records with (true) or without (false) a task due.")
    ] = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Response:
    """Summaries of records of one kind that have activities, with the records' names:
    the caller's records only, as in the records' own lists. Keyset pages."""
    _require(access, OBJECT[kind])
    # An empty range (after >= before) is a valid question with an empty answer.
    s = InteractionSummary
    where: list[ColumnElement[bool]] = []
    if last_activity_before is not None:
        where.append(s.last_activity_at < last_activity_before)
    if last_activity_after is not None:
        where.append(s.last_activity_at >= last_activity_after)
    if min_activities_30d is not None:
        where.append(s.activities_30d >= min_activities_30d)
    if has_next_task is not None:
        where.append(s.next_task_id.is_not(None) if has_next_task else s.next_task_id.is_(None))
    descending = sort.startswith("-")
    name = sort.removeprefix("-")
    # A sort key may be an expression (a nullable time with its stand-in): the cursor
    # holds its value and the keyset predicate compares it.
    order = Sort(name, cast(InstrumentedAttribute[Any], SORTS[name]), descending)
    size = check_limit(limit)
    tenant_id, viewer = access.tenant.tenant_id, record_viewer(access)
    digest = filters_digest(
        tenant_id,
        {
            "kind": kind,
            "last_activity_before": last_activity_before,
            "last_activity_after": last_activity_after,
            "min_activities_30d": min_activities_30d,
            "has_next_task": has_next_task,
        },
    )
    after = Cursor.decode(cursor, sort=order, digest=digest) if cursor else None
    rows = await endpoints.read(
        access,
        lambda conn: repository.fetch_page(
            conn, tenant_id, kind, viewer, where=where, sort=order, limit=size, cursor=after
        ),
    )
    more = len(rows) > size
    rows = rows[:size]
    next_cursor = None
    if more and rows:
        last = rows[-1]
        next_cursor = Cursor(order.token, last["sort_key"], last["record_id"], digest).encode()
    return json_response({"data": [shown(kind, r) for r in rows], "next_cursor": next_cursor})
