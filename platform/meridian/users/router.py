"""User endpoints (``/v1/users``): HTTP only; the flows live in meridian.crud.endpoints.

There is no DELETE: users are deactivated (``PATCH {"active": false}``), never
deleted, so their records keep an owner (the database role cannot delete them either).
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from meridian.crud import endpoints
from meridian.crud.http import (
    CursorQuery,
    IdempotencyKeyHeader,
    IfMatchHeader,
    IfNoneMatchHeader,
    LimitQuery,
    filter_query,
    sort_query,
)
from meridian.crud.pagination import parse_sort
from meridian.crud.schemas import Page, normalise_email
from meridian.deps import CanCreateUsers, CanReadUsers, CanUpdateUsers
from meridian.errors import Conflict
from meridian.identity import forget_actor
from meridian.users.models import AppUser
from meridian.users.repository import FILTERABLE, SORTABLE, UserRepository
from meridian.users.schemas import UserCreate, UserRead, UserUpdate
from meridian.users.service import user as user_service
from meridian.web.openapi import problems

router = APIRouter(prefix="/v1/users", tags=["users"])
KIND = "user"


@router.post("", status_code=201, response_model=UserRead, openapi_extra=problems(Conflict))
async def create_user(
    body: UserCreate,
    request: Request,
    access: CanCreateUsers,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Create (invite) a user; without a password the user cannot log in yet. The role
    must be one of the tenant's (422) and grant nothing the caller's role lacks (403).
    The e-mail is unique in the tenant (409)."""
    user_service.check_assignable(access.policy, access.actor.role, body.role)
    password_hash = await user_service.hash_password(body)
    # The idempotency fingerprint sees the password masked (SecretStr), never in clear.
    return await endpoints.create(
        access,
        request,
        idempotency_key,
        body,
        lambda session: user_service.create(session, access.tenant, body, password_hash),
    )


@router.get("", response_model=Page[UserRead])
async def list_users(
    access: CanReadUsers,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    sort: Annotated[str | None, sort_query(SORTABLE, "name")] = None,
    role: Annotated[str | None, Query(max_length=64)] = None,
    manager_id: UUID | None = None,
    active: bool | None = None,
    email: Annotated[str | None, Query(max_length=320)] = None,
    filter_: Annotated[str | None, filter_query(FILTERABLE)] = None,
) -> Response:
    """Sort: ``name``, ``created_at``, ``updated_at``; default ``name``."""
    found = await endpoints.list_filter(access, UserRepository, filter_, FILTERABLE)
    filters = {
        "role": role,
        "manager_id": manager_id,
        "active": active,
        "email": email and normalise_email(email),
    }
    where = [getattr(AppUser, k) == v for k, v in filters.items() if v is not None]
    return await endpoints.listing(
        access,
        UserRepository,
        where=where,
        filters=filters,
        asked=found,
        sort=parse_sort(sort, SORTABLE, "name"),
        limit=limit,
        cursor=cursor,
    )


@router.get("/{user_id}", response_model=UserRead)
async def get_user(
    user_id: UUID, access: CanReadUsers, if_none_match: IfNoneMatchHeader = None
) -> Response:
    return await endpoints.fetch(access, UserRepository, KIND, user_id, if_none_match)


# 409: a manager at or below the user, or deactivating a user who manages active users.
@router.patch("/{user_id}", response_model=UserRead, openapi_extra=problems(Conflict))
async def update_user(
    user_id: UUID,
    body: UserUpdate,
    access: CanUpdateUsers,
    if_match: IfMatchHeader = None,
) -> Response:
    """Change name, role, manager, password, or deactivate (``active: false``).

    A new manager must be an active user and not the user or anyone below them; a
    user who still manages active users cannot be deactivated. A new role is checked
    as on creation.
    """
    if body.role is not None:
        user_service.check_assignable(access.policy, access.actor.role, body.role)
    password_hash = await user_service.hash_password(body)
    response = await endpoints.change(
        access,
        KIND,
        user_id,
        if_match,
        lambda session, version: user_service.update(
            session, access.tenant, user_id, body, version, password_hash
        ),
    )
    # Role and state are cached for the request path of the user's own tokens.
    await forget_actor(access, user_id)
    return response
