"""HTTP plumbing shared by the resource routers: ETags, conditional requests, pages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any

from fastapi import Header, Query
from starlette.responses import Response

from meridian.crud.filters import MAX_LENGTH as MAX_FILTER_LENGTH
from meridian.crud.filters import PARAMETER as FILTER_PARAMETER
from meridian.crud.filters import FilterField, describe
from meridian.crud.idempotency import KEY_PATTERN, MAX_KEY_LENGTH, StoredResponse
from meridian.crud.pagination import MAX_LIMIT, Cursor, Sort
from meridian.errors import PreconditionFailed
from meridian.web.responses import json_response

# The header formats below are declared, so FastAPI refuses anything else (422) and the
# OpenAPI document states them: a generated request that fits them is one the API takes.
# `*`, or exactly one strong ETag as issued (versions are 32-bit integers); spaces around
# it are HTTP's optional whitespace.
IF_MATCH_PATTERN = r'^ *(\*|"[0-9]{1,10}") *$'
# `*`, or a list of entity tags (RFC 9110 §8.8.3), weak ones included.
IF_NONE_MATCH_PATTERN = r'^ *(\*|(W/)?"[!#-~]*"( *, *(W/)?"[!#-~]*")*) *$'
MAX_VERSION = 2**31 - 1
# Named formats besides the patterns, so tools can generate such values (a pattern of
# quotes and stars is more than some generators attempt for headers).
ETAG_FORMAT = "entity-tag"
ETAG_LIST_FORMAT = "entity-tag-list"

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        pattern=KEY_PATTERN,
        description="Makes a POST safe to retry for 24 hours: the same key and body "
        "return the first response (with Idempotent-Replayed: true). 1-255 printable "
        "ASCII characters, no space first or last.",
    ),
]
IfMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-Match",
        pattern=IF_MATCH_PATTERN,
        json_schema_extra={"format": ETAG_FORMAT},
        description='The ETag the change is based on ("3"), or * for any version: the '
        "change is refused (412) if the resource changed since.",
    ),
]
IfNoneMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        max_length=1024,
        pattern=IF_NONE_MATCH_PATTERN,
        json_schema_extra={"format": ETAG_LIST_FORMAT},
        description="ETags you hold (or *): the answer is 304 without a body if one is current.",
    ),
]
LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size (1-{MAX_LIMIT}).")]
CursorQuery = Annotated[
    str | None,
    Query(
        description="The next_cursor of the previous page; it works only with the sort "
        "and filters it was issued for (else 400 invalid-cursor)."
    ),
]


def sort_query(sortable: Iterable[str], default: str, *, custom: bool = False) -> Any:
    """The ``sort`` parameter of a list over these fields (``-`` first: descending);
    with ``custom``, also over the tenant's custom fields (``custom.<name>``)."""
    names = sorted(sortable)
    listed = {"enum": [*names, *(f"-{n}" for n in names)]}
    if not custom:
        return Query(
            description=f"The order of the list; default {default}.", json_schema_extra=listed
        )
    return Query(
        description=f"The order of the list; default {default}. `custom.<name>` sorts by a "
        "custom field (not a multi-picklist); records without a value come last, in id "
        "order.",
        json_schema_extra={
            "anyOf": [{"type": "string", **listed}, {"type": "string", "pattern": CUSTOM_SORT}]
        },
    )


CUSTOM_SORT = r"^-?custom\.[a-z][a-z0-9_]{0,62}$"


def filter_query(fields: Mapping[str, FilterField]) -> Any:
    """The ``filter`` parameter of a list over these fields (``meridian.crud.filters``):
    its description documents the syntax and names each field with its operators."""
    return Query(alias=FILTER_PARAMETER, max_length=MAX_FILTER_LENGTH, description=describe(fields))


def version_etag(version: int) -> str:
    """The strong ETag of a representation at ``version`` (as If-Match expects it)."""
    return f'"{version}"'


def etag(row: Mapping[str, Any]) -> str:
    """The ETag of a versioned record: its ``version``."""
    return version_etag(row["version"])


def expected_version(if_match: str | None) -> int | None:
    """The version an If-Match (of the declared format) names; None for ``*`` (any
    version) or when absent."""
    if if_match is None or if_match.strip() == "*":
        return None
    version = int(if_match.strip().strip('"'))
    if version > MAX_VERSION:
        # Never issued, so it cannot match (and the database column would overflow).
        raise PreconditionFailed("The resource has changed since the ETag was issued.")
    return version


def not_modified(tag: str, if_none_match: str | None) -> bool:
    """Whether the client already holds ``tag``: its If-None-Match (of the declared
    format) is ``*`` or lists it, weakly compared (RFC 9110 §13.1.2)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return tag in {t.strip().removeprefix("W/") for t in if_none_match.split(",")}


def tagged_response(
    body: Any, tag: str, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response with its ETag."""
    return json_response(body, status_code, {"ETag": tag, **(headers or {})})


def conditional_response(
    body: Any, if_none_match: str | None, *, tag: str | None = None
) -> Response:
    """The answer to every GET of one representation: the body with its ETag, or 304
    without a body when the client holds it already. The ETag is the record's version
    unless ``tag`` names another (a constant, the tenant's policy version)."""
    tag = etag(body) if tag is None else tag
    if not_modified(tag, if_none_match):
        return Response(status_code=304, headers={"ETag": tag})
    return tagged_response(body, tag)


def created(row: Mapping[str, Any], location: str, tag: str | None) -> StoredResponse:
    """A 201 as kept for replays: the new row, its Location and (if it has one) ETag."""
    headers = {"Location": location}
    if tag is not None:
        headers["ETag"] = tag
    return StoredResponse(201, row, headers)


def stored_response(stored: StoredResponse) -> Response:
    headers = dict(stored.headers)
    if stored.replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(stored.body, stored.status_code, headers)


def page_body(
    rows: Sequence[Mapping[str, Any]], *, limit: int, sort: Sort, digest: str
) -> dict[str, Any]:
    """``rows`` holds up to limit + 1 rows; the extra one only says a next page exists."""
    more = len(rows) > limit
    data = list(rows[:limit])
    next_cursor = None
    if more and data:
        last = data[-1]
        next_cursor = Cursor(sort.token, sort.value_of(last), last["id"], digest).encode()
    return {"data": data, "next_cursor": next_cursor}


def page_response(
    rows: Sequence[Mapping[str, Any]], *, limit: int, sort: Sort, digest: str
) -> Response:
    return json_response(page_body(rows, limit=limit, sort=sort, digest=digest))
