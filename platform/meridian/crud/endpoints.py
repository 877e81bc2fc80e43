"""The request flows every resource shares: create, read, list, update, delete.

Routers stay thin: they parse HTTP and call these with their repository and service.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast
from uuid import UUID

import orjson
from fastapi import Request
from pydantic import BaseModel
from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from cache.codec import JSON
from meridian.crud.http import (
    created,
    expected_version,
    page_body,
    record_response,
    stored_response,
)
from meridian.crud.idempotency import request_fingerprint, run_idempotent
from meridian.crud.pagination import Cursor, Sort, check_limit, filters_digest
from meridian.crud.repository import TenantRepository, VersionMismatch
from meridian.deps import TenantAccess
from meridian.errors import NotFound, PreconditionFailed
from meridian.web.responses import dumps, json_response

Row = dict[str, Any]


def not_found(kind: str, record_id: UUID) -> NotFound:
    return NotFound(f"No {kind} with id {record_id}.")


async def create(
    access: TenantAccess,
    request: Request,
    idempotency_key: str | None,
    body: BaseModel,
    make: Callable[[AsyncSession], Awaitable[Row]],
    *,
    kind: str | None = None,
) -> Response:
    """``kind`` names the cached lists the new record belongs to."""
    fingerprint = request_fingerprint("POST", request.url.path, body.model_dump(mode="json"))

    async with access.write() as session:

        async def produce() -> Any:
            row = await make(session)
            return created(row, f"{request.url.path.rstrip('/')}/{row['id']}")

        stored = await run_idempotent(
            session, access.tenant.tenant_id, idempotency_key, fingerprint, produce
        )
    if kind is not None and not stored.replayed:
        await invalidate(access, kind)
    return stored_response(stored)


async def fetch(
    access: TenantAccess,
    repo: type[TenantRepository[Any]],
    kind: str,
    record_id: UUID,
    request: Request,
) -> Response:
    tenant_id = access.tenant.tenant_id

    async def load() -> Row | None:
        async with access.reader() as conn:
            return await repo.fetch_one(conn, tenant_id, record_id)

    policy = access.runtime.record_cache.get(kind)
    if policy is None:
        row = await load()
    else:

        async def load_json() -> Row | None:
            # Cached as JSON-ready values: what the response serialises anyway.
            found = await load()
            return orjson.loads(dumps(found)) if found is not None else None

        row = await access.runtime.cache.get_or_load(
            str(tenant_id),
            kind,
            str(record_id),
            load_json,
            JSON,
            policy,
            scope=record_bucket(record_id),
        )
    if row is None:
        raise not_found(kind, record_id)
    return record_response(row, request)


# Record generations are kept per bucket of ids, so a write invalidates 1/64 of the
# tenant's cached records of its kind instead of all of them.
RECORD_BUCKETS = 64


def record_bucket(record_id: UUID) -> str:
    return str(record_id.int % RECORD_BUCKETS)


async def invalidate(access: TenantAccess, kind: str, record_id: UUID | None = None) -> None:
    """After a committed change: other readers must stop using cached copies.

    A creation (no ``record_id``) changes lists only: nobody can have cached a record
    that did not exist, beyond a brief "not found". Updates and deletions change both.
    """
    tenant = str(access.tenant.tenant_id)
    if record_id is not None and kind in access.runtime.record_cache:
        await access.runtime.cache.invalidate(tenant, kind, record_bucket(record_id))
    if kind in access.runtime.list_cache:
        await access.runtime.cache.invalidate(tenant, f"{kind}-list")


async def listing(
    access: TenantAccess,
    repo: type[TenantRepository[Any]],
    *,
    where: Sequence[ColumnElement[bool]],
    filters: Mapping[str, Any],
    sort: Sort,
    limit: int | None,
    cursor: str | None,
) -> Response:
    size = check_limit(limit)
    digest = filters_digest(filters)
    after = Cursor.decode(cursor, sort=sort, digest=digest) if cursor else None
    tenant_id = access.tenant.tenant_id

    async def load() -> Row:
        async with access.reader() as conn:
            rows = await repo.fetch_page(
                conn, tenant_id, where=where, sort=sort, limit=size, cursor=after
            )
        return page_body(rows, limit=size, sort=sort, digest=digest)

    kind = repo.model.__tablename__
    policy = access.runtime.list_cache.get(kind)
    if policy is None:
        return json_response(await load())

    async def load_json() -> Row:
        return cast(Row, orjson.loads(dumps(await load())))

    # The page is named by everything that shapes it; the generation of the tenant's
    # "<kind>-list" changes with every write of that kind.
    page_key = f"{sort.token}|{digest}|{size}|{cursor or ''}"
    body = await access.runtime.cache.get_or_load(
        str(tenant_id), f"{kind}-list", page_key, load_json, JSON, policy
    )
    return json_response(body)


async def change(
    access: TenantAccess,
    kind: str,
    record_id: UUID,
    if_match: str | None,
    apply: Callable[[AsyncSession, int | None], Awaitable[Row | None]],
) -> Response:
    version = expected_version(if_match)
    try:
        async with access.write() as session:
            row = await apply(session, version)
    except VersionMismatch as exc:
        raise PreconditionFailed(
            f"The {kind} has changed since the ETag was issued; read it again."
        ) from exc
    if row is None:
        raise not_found(kind, record_id)
    await invalidate(access, kind, record_id)
    return json_response(row, headers={"ETag": f'"{row["version"]}"'})


async def remove(
    access: TenantAccess,
    repo: type[TenantRepository[Any]],
    kind: str,
    record_id: UUID,
    if_match: str | None,
) -> Response:
    version = expected_version(if_match)
    try:
        async with access.write() as session:
            deleted = await repo(session, access.tenant).delete(record_id, expected_version=version)
    except VersionMismatch as exc:
        raise PreconditionFailed(
            f"The {kind} has changed since the ETag was issued; read it again."
        ) from exc
    if not deleted:
        raise not_found(kind, record_id)
    await invalidate(access, kind, record_id)
    return Response(status_code=204)
