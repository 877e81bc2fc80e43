"""Request dependencies: authentication, tenant resolution, transactions.

One dependency per route does the whole chain (token → principal → tenant → checks),
because every extra FastAPI dependency costs on the hot path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from meridian.errors import (
    Forbidden,
    InsufficientScope,
    ServiceUnavailable,
    TenantSuspended,
    Unauthorized,
)
from meridian.identity import Actor, resolve_actor
from meridian.oauth.principal import SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE, Principal
from meridian.runtime import Runtime
from tenancy.context import TenantContext, TenantStatus, current_tenant_id


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def authenticate(request: Request) -> Principal:
    auth = request.headers.get("authorization")
    if not auth:
        raise Unauthorized("A bearer token is required.", headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("The Authorization header must be 'Bearer <token>'.")
    runtime = get_runtime(request)
    return await runtime.verifier.verify(token.strip())


@dataclass(frozen=True, slots=True)
class TenantAccess:
    """What a tenant-facing handler gets: who calls, for which tenant, and its shard."""

    principal: Principal
    tenant: TenantContext
    runtime: Runtime
    actor: Actor

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.runtime.router.transaction(
            self.tenant, write=False, on_stale=self.runtime.refresh_tenant
        ) as session:
            yield session

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[asyncpg.Connection]:
        """The hot read path: a raw asyncpg connection inside the tenant (no ORM)."""
        async with self.runtime.router.reader(
            self.tenant, on_stale=self.runtime.refresh_tenant
        ) as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        async with self.runtime.router.transaction(
            self.tenant, write=True, on_stale=self.runtime.refresh_tenant
        ) as session:
            yield session


class RequireTenant:
    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(self, request: Request) -> TenantAccess:
        principal = await authenticate(request)
        if principal.tenant_id is None:
            raise Forbidden("This endpoint needs a tenant token; platform tokens have no tenant.")
        if self.scope not in principal.scopes:
            raise InsufficientScope(f"The token lacks the '{self.scope}' scope.")
        runtime = get_runtime(request)
        tenant = await runtime.directory.resolve(principal.tenant_id)
        if tenant is None or tenant.status is TenantStatus.DELETED:
            raise Unauthorized("The token's tenant does not exist.")
        if tenant.status is TenantStatus.SUSPENDED:
            raise TenantSuspended("The tenant is suspended; contact the platform administrator.")
        if tenant.status is TenantStatus.PROVISIONING:
            raise ServiceUnavailable(
                "The tenant is still being provisioned.", headers={"Retry-After": "1"}
            )
        if tenant.shard_id not in runtime.engines.shards:
            # Placed on a shard registered after this instance last read the topology.
            await runtime.reload_topology()
        current_tenant_id.set(tenant.tenant_id)
        actor = await resolve_actor(runtime, tenant, principal)
        return TenantAccess(principal, tenant, runtime, actor)


async def require_admin(request: Request) -> Principal:
    principal = await authenticate(request)
    if SCOPE_ADMIN not in principal.scopes or principal.tenant_id is not None:
        raise InsufficientScope(f"The token lacks the '{SCOPE_ADMIN}' scope.")
    return principal


ReadAccess = Annotated[TenantAccess, Depends(RequireTenant(SCOPE_READ))]
WriteAccess = Annotated[TenantAccess, Depends(RequireTenant(SCOPE_WRITE))]
AdminPrincipal = Annotated[Principal, Depends(require_admin)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
