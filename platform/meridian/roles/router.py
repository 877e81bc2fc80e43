"""Roles (``/v1/roles``): list and read every role of the tenant (templates included),
create, change and delete custom roles, override a template's permissions for the
tenant (``PUT /v1/roles/{name}/permissions``) and return to the template
(``DELETE /v1/roles/{name}/permissions``).

The ETag of a role is the tenant's policy version (a role's effective permissions
depend on the roles it inherits); If-Match makes a change conditional (412).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Request
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from starlette.responses import Response

from authz.policy import ROLE_NAME
from meridian.crud import control, endpoints
from meridian.crud.http import (
    IdempotencyKeyHeader,
    IfMatchHeader,
    IfNoneMatchHeader,
    conditional_response,
    expected_version,
    stored_response,
    tagged_response,
    version_etag,
)
from meridian.crud.idempotency import StoredResponse, validate_key
from meridian.deps import (
    CanCreateRoles,
    CanDeleteRoles,
    CanReadRoles,
    CanUpdateRoles,
    ControlPlane,
    TenantAccess,
)
from meridian.errors import Conflict
from meridian.roles.schemas import (
    RoleBody,
    RoleCreate,
    RoleList,
    RolePermissions,
    RoleRead,
    RoleUpdate,
)
from meridian.roles.service import Grantor, role_event
from meridian.roles.service import role as role_service
from meridian.web.openapi import problems

router = APIRouter(prefix="/v1/roles", tags=["roles"])
logger = logging.getLogger("meridian.roles")
RoleNamePath = Annotated[str, Path(max_length=63, pattern=ROLE_NAME.pattern)]


def _etag(row: RoleBody) -> str:
    return version_etag(row["policy_version"])


def _role_response(row: RoleBody) -> Response:
    return tagged_response(row, _etag(row))


def _grantor(access: TenantAccess) -> Grantor:
    return Grantor(access.actor.role, access.policy)


# (connection, tenant, grantor, policy version, the version If-Match expects) -> the role
RoleChange = Callable[[AsyncConnection, UUID, Grantor, int, int | None], Awaitable[RoleBody]]


async def _audited(access: TenantAccess, before: RoleBody | None, after: RoleBody | None) -> None:
    """The committed change's event, appended to the tenant's event log on its shard.

    After the control-plane commit, not atomically with it (two databases): if the shard
    cannot take it, the change stands, the request succeeds, and the lost event is
    logged with what it would have said."""
    tenant_id = access.tenant.tenant_id

    async def append(session: AsyncSession) -> None:
        await role_service.record_change(session, tenant_id, before, after)

    try:
        await endpoints.transact(access, "role", append)
    except Exception:
        logger.exception(
            "role change in tenant %s not recorded in its event log: %s",
            tenant_id,
            role_event(before, after),
        )


async def _changed(
    access: TenantAccess, name: str, if_match: str | None, change: RoleChange
) -> Response:
    """A change of one role at the policy version If-Match names, answered with the
    role as it now is (and recorded when it changed anything)."""
    expected, tenant_id, grantor = (
        expected_version(if_match),
        access.tenant.tenant_id,
        _grantor(access),
    )

    async def work(conn: AsyncConnection, version: int) -> tuple[RoleBody | None, RoleBody]:
        before = await role_service.find_role(conn, tenant_id, name)
        return before, await change(conn, tenant_id, grantor, version, expected)

    before, row = await control.change_policy(access, work)
    if before is None or before["policy_version"] != row["policy_version"]:
        await _audited(access, before, row)
    return _role_response(row)


@router.get("", response_model=RoleList)
async def list_roles(access: CanReadRoles, plane: ControlPlane) -> Response:
    """Every role of the tenant by name, templates included (one page: a tenant has few
    roles)."""
    tenant_id = access.tenant.tenant_id
    rows, version = await control.read(plane, lambda conn: role_service.list_roles(conn, tenant_id))
    return tagged_response({"data": rows, "next_cursor": None}, version_etag(version))


@router.post("", status_code=201, response_model=RoleRead, openapi_extra=problems(Conflict))
async def create_role(
    body: RoleCreate,
    request: Request,
    access: CanCreateRoles,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """A custom role: its own permissions plus, with ``inherits``, another role's."""
    # Not endpoints.create: roles live in the control plane, the key is kept on the role
    # (tenant_role.creation_key) and a replay answers the role as it is now.
    key = validate_key(idempotency_key) if idempotency_key else None
    tenant_id, grantor = access.tenant.tenant_id, _grantor(access)
    row, created_now = await control.change_policy(
        access, lambda conn, _: role_service.create_role(conn, tenant_id, grantor, body, key)
    )
    if created_now:
        await _audited(access, None, row)
    location = f"{request.url.path.rstrip('/')}/{body.name}"
    headers = {"ETag": _etag(row), "Location": location}
    return stored_response(StoredResponse(201, row, headers, replayed=not created_now))


@router.get("/{name}", response_model=RoleRead)
async def get_role(
    name: RoleNamePath,
    access: CanReadRoles,
    plane: ControlPlane,
    if_none_match: IfNoneMatchHeader = None,
) -> Response:
    tenant_id = access.tenant.tenant_id
    row = await control.read(plane, lambda conn: role_service.get_role(conn, tenant_id, name))
    return conditional_response(row, if_none_match, tag=_etag(row))


@router.patch("/{name}", response_model=RoleRead, openapi_extra=problems(Conflict))
async def update_role(
    name: RoleNamePath,
    body: RoleUpdate,
    access: CanUpdateRoles,
    if_match: IfMatchHeader = None,
) -> Response:
    """Custom roles only (templates: PUT /v1/roles/{name}/permissions)."""
    return await _changed(
        access,
        name,
        if_match,
        lambda conn, tenant_id, grantor, version, expected: role_service.update_role(
            conn, tenant_id, grantor, name, body, version=version, expected=expected
        ),
    )


@router.delete("/{name}", status_code=204, openapi_extra=problems(Conflict))
async def delete_role(
    name: RoleNamePath, access: CanDeleteRoles, if_match: IfMatchHeader = None
) -> Response:
    """Custom roles only, and only while no user, client or role depends on them (409)."""
    expected, tenant_id = expected_version(if_match), access.tenant.tenant_id

    async def users_hold() -> bool:
        # Users live on the tenant's shard: read through the kit's read flow.
        return await endpoints.read(
            access, lambda shard: role_service.users_hold(shard, tenant_id, name)
        )

    async def work(conn: AsyncConnection, version: int) -> RoleBody | None:
        before = await role_service.find_role(conn, tenant_id, name)
        await role_service.delete_role(
            conn, tenant_id, name, version=version, expected=expected, users_hold=users_hold
        )
        return before

    before = await control.change_policy(access, work)
    await _audited(access, before, None)
    return Response(status_code=204)


@router.put("/{name}/permissions", response_model=RoleRead, openapi_extra=problems(Conflict))
async def set_role_permissions(
    name: RoleNamePath,
    body: RolePermissions,
    access: CanUpdateRoles,
    if_match: IfMatchHeader = None,
) -> Response:
    """Replace a role's own permissions. On a template this overrides it for this tenant
    only (admin cannot be overridden)."""
    return await _changed(
        access,
        name,
        if_match,
        lambda conn, tenant_id, grantor, version, expected: role_service.set_role_permissions(
            conn, tenant_id, grantor, name, body.permissions, version=version, expected=expected
        ),
    )


@router.delete("/{name}/permissions", response_model=RoleRead, openapi_extra=problems(Conflict))
async def reset_role_permissions(
    name: RoleNamePath, access: CanUpdateRoles, if_match: IfMatchHeader = None
) -> Response:
    """Drop this tenant's override of a template (idempotent)."""
    return await _changed(
        access,
        name,
        if_match,
        lambda conn, tenant_id, grantor, version, expected: role_service.reset_role_permissions(
            conn, tenant_id, grantor, name, version=version, expected=expected
        ),
    )
