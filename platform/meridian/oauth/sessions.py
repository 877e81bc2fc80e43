"""Tenant-side emergency revocation: void every token of one user at once."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends
from starlette.responses import Response

from meridian.crud import endpoints
from meridian.deps import CanUpdateUsers, RuntimeDep
from meridian.errors import NotFound
from meridian.oauth.notbefore import NotBeforeStore
from meridian.oauth.schemas import TokensRevoked
from meridian.users.repository import UserRepository
from meridian.web.responses import json_response

router = APIRouter(prefix="/v1", tags=["users"])


def _revocations(runtime: RuntimeDep) -> NotBeforeStore:
    return runtime.revocations


Revocations = Annotated[NotBeforeStore, Depends(_revocations)]


@router.post("/users/{user_id}/revoke-tokens", response_model=TokensRevoked)
async def revoke_user_tokens(
    user_id: UUID, access: CanUpdateUsers, revocations: Revocations
) -> Response:
    """Every access token of the user issued before now is refused, on every API
    instance within a second, and the user's refresh tokens are revoked: the user
    must sign in again. Tokens issued afterwards work."""
    found = await endpoints.by_id(access, UserRepository, user_id)
    if found is None:
        # Includes users of other tenants: an id outside the tenant does not exist here.
        raise NotFound(f"No user with id {user_id}.")
    revoked = await revocations.revoke(access.tenant.tenant_id, user_id)
    return json_response(asdict(revoked))
