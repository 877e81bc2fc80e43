"""Record shares: ``/v1/{accounts|contacts|opportunities}/{id}/shares``.

A share gives one user, or a team (a manager and everyone below them), sight of a
record they would not see through the reporting line. Only actors who can see the
record and may update its kind (besides shares:create/delete) share it or revoke its
shares; a record the actor cannot see is 404 here as everywhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from starlette.responses import Response

from meridian.accounts.repository import AccountRepository
from meridian.cases.repository import CaseRepository
from meridian.contacts.repository import ContactRepository
from meridian.crud import endpoints
from meridian.crud.http import (
    CursorQuery,
    IdempotencyKeyHeader,
    LimitQuery,
    page_response,
)
from meridian.crud.pagination import Cursor, check_limit, filters_digest
from meridian.crud.repository import TenantRepository
from meridian.crud.schemas import Page
from meridian.deps import (
    CanCreateShares,
    CanDeleteShares,
    CanReadShares,
    TenantAccess,
    record_viewer,
)
from meridian.errors import Conflict, Forbidden
from meridian.leads.repository import LeadRepository
from meridian.opportunities.repository import OpportunityRepository
from meridian.sharing.repository import OLDEST_FIRST, ShareRepository
from meridian.sharing.schemas import ShareCreate, ShareRead
from meridian.sharing.service import record_not_found
from meridian.sharing.service import sharing as sharing_service
from meridian.web.openapi import problems

router = APIRouter(tags=["sharing"])
SHARE = "share"

# URL segment -> (record kind, its repository).
SHAREABLE: dict[str, tuple[str, type[TenantRepository[Any]]]] = {
    "accounts": ("account", AccountRepository),
    "contacts": ("contact", ContactRepository),
    "opportunities": ("opportunity", OpportunityRepository),
    "leads": ("lead", LeadRepository),
    "cases": ("case", CaseRepository),
}


def _require_update(access: TenantAccess, plural: str, kind: str) -> None:
    # The route declares shares:create/delete; changing who sees a record is also a
    # change of the record, so the role must be allowed to update its kind.
    if not access.can(plural, "update"):
        raise Forbidden(
            f"Sharing a {kind} needs the right to update it.", object=plural, action="update"
        )


def _list_shares(
    kind: str, repo: type[TenantRepository[Any]]
) -> Callable[..., Awaitable[Response]]:
    async def list_shares(
        record_id: UUID,
        access: CanReadShares,
        limit: LimitQuery = 50,
        cursor: CursorQuery = None,
    ) -> Response:
        size = check_limit(limit)
        digest = filters_digest(access.tenant.tenant_id, {"record_id": record_id})
        after = Cursor.decode(cursor, sort=OLDEST_FIRST, digest=digest) if cursor else None
        tenant_id = access.tenant.tenant_id
        viewer = record_viewer(access)
        rows = await endpoints.read(
            access,
            lambda conn: ShareRepository.fetch_of_record(
                conn, repo, tenant_id, record_id, viewer=viewer, limit=size, cursor=after
            ),
        )
        if rows is None:
            raise record_not_found(kind, record_id)
        return page_response(rows, limit=size, sort=OLDEST_FIRST, digest=digest)

    return list_shares


def _create_share(kind: str, plural: str) -> Callable[..., Awaitable[Response]]:
    async def create_share(
        record_id: UUID,
        body: ShareCreate,
        request: Request,
        access: CanCreateShares,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response:
        _require_update(access, plural, kind)
        viewer = record_viewer(access)
        return await endpoints.create(
            access,
            request,
            idempotency_key,
            body,
            lambda session: sharing_service.grant(
                session,
                access.tenant,
                kind,
                record_id,
                body,
                viewer=viewer,
                granted_by=access.actor.user_id,
            ),
            tag=None,  # a share is never changed, only revoked: it has no ETag
        )

    return create_share


def _delete_share(kind: str, plural: str) -> Callable[..., Awaitable[Response]]:
    async def delete_share(record_id: UUID, share_id: UUID, access: CanDeleteShares) -> Response:
        _require_update(access, plural, kind)
        viewer = record_viewer(access)
        await endpoints.transact(
            access,
            SHARE,
            lambda session: sharing_service.revoke(
                session, access.tenant, kind, record_id, share_id, viewer=viewer
            ),
        )
        return Response(status_code=204)

    return delete_share


for _plural, (_kind, _repo) in SHAREABLE.items():
    _path = f"/v1/{_plural}/{{record_id}}/shares"
    router.add_api_route(
        _path,
        _list_shares(_kind, _repo),
        methods=["GET"],
        response_model=Page[ShareRead],
        name=f"list_{_kind}_shares",
        summary=f"List the shares of a {_kind}",
    )
    router.add_api_route(
        _path,
        _create_share(_kind, _plural),
        methods=["POST"],
        status_code=201,
        response_model=ShareRead,
        openapi_extra=problems(Conflict),  # already shared with that user or team
        name=f"create_{_kind}_share",
        summary=f"Share a {_kind} with a user or a team",
    )
    router.add_api_route(
        f"{_path}/{{share_id}}",
        _delete_share(_kind, _plural),
        methods=["DELETE"],
        status_code=204,
        name=f"delete_{_kind}_share",
        summary=f"Revoke a share of a {_kind}",
    )
