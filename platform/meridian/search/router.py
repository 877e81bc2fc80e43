"""``GET /v1/search``: one query over accounts, contacts, leads, opportunities and cases,
ranked, within the caller's record scope and the kinds its role may read."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Query
from starlette.responses import Response

from authz.fields import PII_PERMISSION
from meridian.crud import endpoints
from meridian.crud.http import CursorQuery, LimitQuery
from meridian.crud.pagination import check_limit
from meridian.deps import Keyring, TenantAccess, record_viewer
from meridian.encryption.fields import search_indexes
from meridian.errors import Forbidden, invalid_field
from meridian.search import repository
from meridian.search import service as search_service
from meridian.search.models import KINDS
from meridian.search.permissions import OBJECTS, CanSearch
from meridian.search.schemas import SearchPage
from meridian.web.responses import json_response
from tenancy.keyring import TenantKeyring

router = APIRouter(prefix="/v1/search", tags=["search"])

_KIND = "|".join(KINDS)
KINDS_PATTERN = f"^({_KIND})(,({_KIND}))*$"


@router.get("", response_model=SearchPage)
async def search_records(
    access: CanSearch,
    keyring: Keyring,
    q: Annotated[
        str,
        Query(
            min_length=1,
            max_length=search_service.MAX_QUERY,
            description="Words, each matched as a word or the start of one (case and "
            "accents ignored), all of them; or an exact email, phone number or tax id "
            "(needs pii:read).",
        ),
    ],
    kinds: Annotated[
        str | None,
        Query(
            pattern=KINDS_PATTERN,
            description="Only these kinds, comma-separated (default: every kind the role "
            "may read).",
        ),
    ] = None,
    include: Annotated[
        Literal["record"] | None,
        Query(description="record: each result carries its record, as its GET returns it."),
    ] = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Response:
    """The best matches first; keyset pages with no cap on how far they go. Kinds the
    role may not read are left out (403 when it may read none of those asked for)."""
    size = check_limit(limit)
    if "\x00" in q:
        raise invalid_field("q", "text cannot contain U+0000")
    wanted = search_service.parse_kinds(kinds)
    readable = tuple(kind for kind in wanted if access.can(OBJECTS[kind], "read"))
    if not readable:
        names = ", ".join(OBJECTS[kind] for kind in wanted)
        raise Forbidden(
            f"The role '{access.actor.role}' may not read {names}.",
            object=OBJECTS[wanted[0]],
            action="read",
        )
    identifiers = await _identifiers(access, keyring, q, readable)
    tenant_id, viewer = access.tenant.tenant_id, record_viewer(access)
    # Cursors name the sealed values searched by their blind index, never the value.
    identified = ",".join(
        sorted(
            indexes[0].hex()
            for by_field in identifiers.values()
            for indexes in by_field.values()
            if indexes
        )
    )

    async def work(conn: asyncpg.Connection) -> tuple[str, list[dict[str, Any]]]:
        words = search_service.check_words(await repository.terms(conn, q))
        bound_to = search_service.digest(tenant_id, words, readable, identified)
        after = search_service.decode_cursor(cursor, bound_to) if cursor else None
        rows = await repository.search_page(
            conn,
            tenant_id,
            viewer,
            kinds=readable,
            words=words,
            identifiers=identifiers,
            after=after or repository.Position(),
            rows=size + 1,
        )
        hits = [dict(row) for row in rows]
        if include == "record":
            await _with_records(conn, tenant_id, viewer, hits[:size])
        return bound_to, hits

    bound_to, hits = await endpoints.read(access, work)
    page = hits[:size]
    next_cursor = (
        search_service.encode_cursor(page[-1], bound_to) if len(hits) > size and page else None
    )
    data = [await _shown(access, hit, include == "record") for hit in page]
    return json_response({"data": data, "next_cursor": next_cursor})


async def _identifiers(
    access: TenantAccess, keyring: TenantKeyring, q: str, kinds: tuple[str, ...]
) -> dict[str, dict[str, list[bytes]]]:
    """The blind indexes to compare sealed fields with (kind → field → indexes under
    every live key version), when ``q`` looks like one of them. Without pii:read none:
    a match would tell whether a value is on file."""
    values = search_service.identifiers_in(q)
    if not values or not access.can(*PII_PERMISSION):
        return {}
    tenant_id = access.tenant.tenant_id
    out: dict[str, dict[str, list[bytes]]] = {}
    for kind, fields in search_service.sealed_fields(kinds, list(values)).items():
        out[kind] = {
            field: await search_indexes(keyring, tenant_id, kind, field, values[field])
            for field in fields
        }
    return out


async def _with_records(
    conn: asyncpg.Connection, tenant_id: UUID, viewer: UUID | None, hits: list[dict[str, Any]]
) -> None:
    """Each hit's record row, read in the search's own snapshot."""
    for kind in KINDS:
        ids = [hit["record_id"] for hit in hits if hit["kind"] == kind]
        if not ids:
            continue
        found = await repository.records(conn, tenant_id, viewer, kind, ids)
        for hit in hits:
            if hit["kind"] == kind:
                hit["record"] = found.get(hit["record_id"])


async def _shown(access: TenantAccess, hit: dict[str, Any], with_record: bool) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "kind": hit["kind"],
        "id": hit["record_id"],
        "title": hit["title"],
        "subtitle": hit["subtitle"],
        "rank": hit["rank"],
    }
    if with_record:
        row = hit.get("record")
        # Decrypted, then masked without pii:read, exactly as endpoints.fetch shows it.
        shown["record"] = (
            None
            if row is None
            else endpoints.shown(
                access, hit["kind"], await endpoints.opened(access, hit["kind"], row)
            )
        )
    return shown
