"""The tenant's event log: ``GET /v1/events``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from meridian.crud import endpoints
from meridian.crud.http import LimitQuery
from meridian.deps import CanReadEvents, TenantAccess, record_viewer
from meridian.errors import Gone
from meridian.events import log
from meridian.events.schemas import EventPage
from meridian.web.openapi import problems
from meridian.web.responses import json_response

router = APIRouter(prefix="/v1/events", tags=["events"])

AfterQuery = Annotated[
    str | None,
    Query(
        description="Events after this one: a seq (0 for the oldest retained), or the "
        "next_cursor of the previous page.",
        pattern=r"^[0-9]{1,19}$",
    ),
]
_ONE_TYPE = log.ONE_TYPE
TypeQuery = Annotated[
    str | None,
    Query(
        description="Comma-separated event types (contact.updated) or kinds (contact.*), "
        f"at most {log.MAX_TYPES}.",
        pattern=rf"^{_ONE_TYPE}(,{_ONE_TYPE}){{0,{log.MAX_TYPES - 1}}}$",
    ),
]


def cursor_value(after: str | None) -> int:
    return int(after) if after else 0


async def check_retained(access: TenantAccess, after: int) -> int:
    """A cursor older than the log's retention cannot resume without a gap: 410.
    Returns the newest seq (0 for an empty log, or when ``after`` is 0)."""
    if after == 0:
        return 0
    oldest, newest = await endpoints.read(
        access, lambda conn: log.bounds(conn, access.tenant.tenant_id)
    )
    # An after beyond the newest event is a client ahead of the log (say, one that kept
    # a cursor across a tenant's restore): for a page, an empty page, not an error.
    if oldest > after + 1:
        raise Gone(
            f"Events {after + 1} to {oldest - 1} have passed the tenant's retention; "
            f"resume from after={oldest - 1} (or 0).",
            oldest_seq=oldest,
        )
    return newest


@router.get("", response_model=EventPage, openapi_extra=problems(Gone))
async def list_events(
    access: CanReadEvents,
    after: AfterQuery = None,
    type: TypeQuery = None,
    limit: LimitQuery = 100,
) -> Response:
    """The tenant's events in order, oldest first, from ``after``: replay from 0 or
    from any seq within the retention. Only events of records the caller may see."""
    types = log.TypeFilter.parse(type)
    start = cursor_value(after)
    await log.catch_up(access)
    await check_retained(access, start)
    kinds = log.readable_kinds(access.can)
    tenant_id = access.tenant.tenant_id
    viewer = record_viewer(access)
    rows = await endpoints.read(
        access,
        lambda conn: log.page(
            conn, tenant_id, viewer, kinds=kinds, types=types, after=start, limit=limit + 1
        ),
    )
    more = len(rows) > limit
    rows = rows[:limit]
    # The cursor is the last seq read, even without a next page: a client keeps it
    # and asks again for what came since.
    last = rows[-1]["seq"] if rows else start
    return json_response(
        {"data": rows, "next_cursor": str(last) if more else None, "last_seq": last}
    )
