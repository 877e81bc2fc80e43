"""HTTP plumbing shared by the resource routers: ETags, conditional requests, pages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Header, Query, Request
from starlette.responses import Response

from meridian.crud.idempotency import StoredResponse
from meridian.crud.pagination import Cursor, Sort
from meridian.errors import BadRequest, PreconditionFailed
from meridian.web.responses import json_response

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="Makes a POST safe to retry (24 h)."),
]
IfMatchHeader = Annotated[
    str | None, Header(alias="If-Match", description="The ETag the change is based on.")
]
LimitQuery = Annotated[int, Query(ge=1, le=200, description="Page size (1-200).")]
CursorQuery = Annotated[str | None, Query(description="next_cursor of the previous page.")]
SortQuery = Annotated[str | None, Query(description="A sortable field; prefix - for descending.")]


def etag(row: dict[str, Any]) -> str:
    return f'"{row["version"]}"'


def expected_version(if_match: str | None) -> int | None:
    """The version an If-Match names; None when absent or ``*`` (any version)."""
    if if_match is None or if_match.strip() == "*":
        return None
    tags = [t.strip() for t in if_match.split(",")]
    if len(tags) != 1 or tags[0].startswith("W/"):
        raise BadRequest("If-Match must hold exactly one strong ETag from a previous read.")
    raw = tags[0].strip('"')
    if not raw.isdigit():
        # A well-formed but foreign ETag can never match.
        raise PreconditionFailed("The record has changed since the ETag was issued.")
    return int(raw)


def record_response(row: dict[str, Any], request: Request) -> Response:
    tag = etag(row)
    if_none_match = request.headers.get("if-none-match")
    if if_none_match and tag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers={"ETag": tag})
    return json_response(row, headers={"ETag": tag})


def created(row: dict[str, Any], location: str) -> StoredResponse:
    return StoredResponse(201, row, {"Location": location, "ETag": etag(row)})


def stored_response(stored: StoredResponse) -> Response:
    headers = dict(stored.headers)
    if stored.replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(stored.body, stored.status_code, headers)


def page_body(
    rows: Sequence[dict[str, Any]], *, limit: int, sort: Sort, digest: str
) -> dict[str, Any]:
    """``rows`` holds up to limit + 1 rows; the extra one only says a next page exists."""
    more = len(rows) > limit
    data = list(rows[:limit])
    next_cursor = None
    if more and data:
        last = data[-1]
        next_cursor = Cursor(sort.token, last[sort.name], last["id"], digest).encode()
    return {"data": data, "next_cursor": next_cursor}


def page_response(
    rows: Sequence[dict[str, Any]], *, limit: int, sort: Sort, digest: str
) -> Response:
    return json_response(page_body(rows, limit=limit, sort=sort, digest=digest))
