"""Request dependencies: authentication, tenant resolution, authorization, transactions.

One dependency per route does the whole chain (token → principal → tenant → actor →
capability check), because every extra FastAPI dependency costs on the hot path. Every
tenant endpoint declares the (object, action) it needs through one of the ``Can…``
aliases below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated
from uuid import UUID

import asyncpg
from fastapi import Depends, Query, Request
from saq import Queue
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from authz.enforcer import PolicyUnavailable, TenantPolicy
from authz.policy import CATALOGUE, READ_ACTIONS, is_known
from meridian import logs
from meridian.crud import quota
from meridian.errors import (
    Forbidden,
    InsufficientScope,
    ServiceUnavailable,
    TenantSuspended,
    Unauthorized,
)
from meridian.events import outbox
from meridian.events.jobs import queue_for
from meridian.identity import Actor, resolve_actor
from meridian.principal import SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE, Principal
from meridian.runtime import Runtime
from meridian.settings import PlanLimits, Settings
from meridian.web import ratelimit
from tenancy.context import TenantContext, TenantStatus, current_tenant_id
from tenancy.keyring import TenantKeyring


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
    principal = await runtime.verifier.verify(token.strip())
    if principal.tenant_id is not None:
        # Emergency revocation: checked on every request (the verified token itself is
        # cached in process; the not-before time comes through the shared cache, so a
        # revocation reaches every instance at once).
        not_before = await runtime.revocations.not_before(principal.tenant_id, principal.user_id)
        if principal.issued_at < not_before:
            raise Unauthorized("The access token has been revoked.")
    return principal


@dataclass(frozen=True, slots=True)
class TenantAccess:
    """What a tenant-facing handler gets: who calls, for which tenant, its shard, and
    the tenant's policy as it was when the request was authorized."""

    principal: Principal
    tenant: TenantContext
    runtime: Runtime
    actor: Actor
    policy: TenantPolicy

    def can(self, obj: str, act: str) -> bool:
        """In-handler capability check (memoised, no I/O): e.g. ``can("pii", "read")``."""
        return self.policy.allows(self.actor.role, obj, act)

    # Reads go through meridian.crud.endpoints.by_id and .read (the one read flow),
    # writes through meridian.crud.endpoints.writing, which opens this transaction.
    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        async with self.runtime.router.transaction(
            self.tenant, write=True, on_stale=self.runtime.refresh_tenant
        ) as session:
            # The events the transaction's writes append name who made them.
            outbox.act_as(session, self.event_actor)
            # The records it may create (crud.quota).
            session.info[quota.LIMIT] = self.limits.records_per_object
            yield session

    @property
    def limits(self) -> PlanLimits:
        """What the tenant's plan (or its own limits) allows it."""
        return self.runtime.settings.limits_of(self.tenant.plan, dict(self.tenant.limits))

    @property
    def event_actor(self) -> outbox.EventActor:
        if self.actor.user_id is not None:
            return outbox.EventActor("user", str(self.actor.user_id))
        return outbox.EventActor("client", self.principal.client_id)


# Record scope, beyond the (object, action) a route declares: decided by the policy the
# request was authorized with (memoised, no I/O).
RECORDS_READ_ALL = ("records", "read_all")


def sees_all_records(access: TenantAccess) -> bool:
    """Clients act for the whole tenant; a user sees everything if their role may."""
    return access.actor.user_id is None or access.can(*RECORDS_READ_ALL)


def record_viewer(access: TenantAccess) -> UUID | None:
    """The user whose record scope applies to this request; None when it sees all."""
    return None if sees_all_records(access) else access.actor.user_id


async def _load_policy(runtime: Runtime, tenant: TenantContext) -> TenantPolicy:
    try:
        return await runtime.authz.get(tenant.tenant_id)
    except PolicyUnavailable as exc:
        raise ServiceUnavailable(
            "Access rules cannot be read right now.", headers={"Retry-After": "1"}
        ) from exc


class RequireTenant:
    """The tenant-endpoint dependency: authorizes ``act`` on ``obj`` for the caller.

    The OAuth scope follows from the action (reads need ``crm:read``, everything else
    ``crm:write``); the tenant's Casbin policy then decides for the actor's role.
    ``alternatives``: other actions that also let the caller in (a batch write needs
    ``create`` or ``update``; the flow then checks each item's own).
    """

    def __init__(self, obj: str, act: str, *alternatives: str) -> None:
        for action in (act, *alternatives):
            if not is_known(obj, action):
                # A typo in a route declaration must fail at import, not deny at run time.
                raise ValueError(f"unknown permission {obj}:{action}; known: {sorted(CATALOGUE)}")
        self.obj = obj
        self.act = act
        self.alternatives = alternatives
        self.scope = SCOPE_READ if act in READ_ACTIONS else SCOPE_WRITE

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
        # Refused requests too: a tenant flooding past its quota is still the busiest.
        runtime.metrics.tenant_request(tenant.tenant_id)
        if runtime.limiter is not None:
            # Before anything else is read for the request: a refused one costs little.
            await ratelimit.check(
                runtime.limiter, runtime.settings, runtime.metrics, request, tenant, principal
            )
        if tenant.shard_id not in runtime.engines.shards:
            # Placed on a shard registered after this instance last read the topology.
            await runtime.reload_topology()
        current_tenant_id.set(tenant.tenant_id)
        logs.shard_id.set(tenant.shard_id)
        actor = await resolve_actor(runtime, tenant, principal)
        policy = runtime.authz.cached(tenant.tenant_id) or await _load_policy(runtime, tenant)
        if not policy.allows(actor.role, self.obj, self.act) and not any(
            policy.allows(actor.role, self.obj, other) for other in self.alternatives
        ):
            raise Forbidden(
                f"The role '{actor.role}' may not {' or '.join((self.act, *self.alternatives))} "
                f"{self.obj}.",
                object=self.obj,
                action=self.act,
            )
        return TenantAccess(principal, tenant, runtime, actor, policy)


async def require_admin(request: Request) -> Principal:
    principal = await authenticate(request)
    if SCOPE_ADMIN not in principal.scopes or principal.tenant_id is not None:
        raise InsufficientScope(f"The token lacks the '{SCOPE_ADMIN}' scope.")
    return principal


# One alias per (object, action) an endpoint may declare: `access: CanReadContacts`.
CanReadAccounts = Annotated[TenantAccess, Depends(RequireTenant("accounts", "read"))]
CanCreateAccounts = Annotated[TenantAccess, Depends(RequireTenant("accounts", "create"))]
CanUpdateAccounts = Annotated[TenantAccess, Depends(RequireTenant("accounts", "update"))]
CanDeleteAccounts = Annotated[TenantAccess, Depends(RequireTenant("accounts", "delete"))]
# Batch writes (meridian.crud.batch): the role creates or updates; each item is checked.
CanWriteAccounts = Annotated[TenantAccess, Depends(RequireTenant("accounts", "create", "update"))]
CanWriteContacts = Annotated[TenantAccess, Depends(RequireTenant("contacts", "create", "update"))]
CanWriteOpportunities = Annotated[
    TenantAccess, Depends(RequireTenant("opportunities", "create", "update"))
]
CanWriteLeads = Annotated[TenantAccess, Depends(RequireTenant("leads", "create", "update"))]
CanWriteCases = Annotated[TenantAccess, Depends(RequireTenant("cases", "create", "update"))]
CanReadContacts = Annotated[TenantAccess, Depends(RequireTenant("contacts", "read"))]
CanCreateContacts = Annotated[TenantAccess, Depends(RequireTenant("contacts", "create"))]
CanUpdateContacts = Annotated[TenantAccess, Depends(RequireTenant("contacts", "update"))]
CanDeleteContacts = Annotated[TenantAccess, Depends(RequireTenant("contacts", "delete"))]
CanReadOpportunities = Annotated[TenantAccess, Depends(RequireTenant("opportunities", "read"))]
CanCreateOpportunities = Annotated[TenantAccess, Depends(RequireTenant("opportunities", "create"))]
CanUpdateOpportunities = Annotated[TenantAccess, Depends(RequireTenant("opportunities", "update"))]
CanDeleteOpportunities = Annotated[TenantAccess, Depends(RequireTenant("opportunities", "delete"))]
CanReadLeads = Annotated[TenantAccess, Depends(RequireTenant("leads", "read"))]
CanCreateLeads = Annotated[TenantAccess, Depends(RequireTenant("leads", "create"))]
CanUpdateLeads = Annotated[TenantAccess, Depends(RequireTenant("leads", "update"))]
CanDeleteLeads = Annotated[TenantAccess, Depends(RequireTenant("leads", "delete"))]
CanReadScoring = Annotated[TenantAccess, Depends(RequireTenant("lead_scoring", "read"))]
CanCreateScoring = Annotated[TenantAccess, Depends(RequireTenant("lead_scoring", "create"))]
CanUpdateScoring = Annotated[TenantAccess, Depends(RequireTenant("lead_scoring", "update"))]
CanDeleteScoring = Annotated[TenantAccess, Depends(RequireTenant("lead_scoring", "delete"))]
CanReadCases = Annotated[TenantAccess, Depends(RequireTenant("cases", "read"))]
CanCreateCases = Annotated[TenantAccess, Depends(RequireTenant("cases", "create"))]
CanUpdateCases = Annotated[TenantAccess, Depends(RequireTenant("cases", "update"))]
CanDeleteCases = Annotated[TenantAccess, Depends(RequireTenant("cases", "delete"))]
CanReadFields = Annotated[TenantAccess, Depends(RequireTenant("fields", "read"))]
CanCreateFields = Annotated[TenantAccess, Depends(RequireTenant("fields", "create"))]
CanUpdateFields = Annotated[TenantAccess, Depends(RequireTenant("fields", "update"))]
CanDeleteFields = Annotated[TenantAccess, Depends(RequireTenant("fields", "delete"))]
CanReadDuplicateRules = Annotated[TenantAccess, Depends(RequireTenant("duplicate_rules", "read"))]
CanCreateDuplicateRules = Annotated[
    TenantAccess, Depends(RequireTenant("duplicate_rules", "create"))
]
CanUpdateDuplicateRules = Annotated[
    TenantAccess, Depends(RequireTenant("duplicate_rules", "update"))
]
CanDeleteDuplicateRules = Annotated[
    TenantAccess, Depends(RequireTenant("duplicate_rules", "delete"))
]
CanReadMerges = Annotated[TenantAccess, Depends(RequireTenant("merges", "read"))]
CanUndoMerges = Annotated[TenantAccess, Depends(RequireTenant("merges", "undo"))]
CanReadPipelines = Annotated[TenantAccess, Depends(RequireTenant("pipelines", "read"))]
CanCreatePipelines = Annotated[TenantAccess, Depends(RequireTenant("pipelines", "create"))]
CanUpdatePipelines = Annotated[TenantAccess, Depends(RequireTenant("pipelines", "update"))]
CanDeletePipelines = Annotated[TenantAccess, Depends(RequireTenant("pipelines", "delete"))]
CanReadActivities = Annotated[TenantAccess, Depends(RequireTenant("activities", "read"))]
CanCreateActivities = Annotated[TenantAccess, Depends(RequireTenant("activities", "create"))]
CanReadUsers = Annotated[TenantAccess, Depends(RequireTenant("users", "read"))]
CanCreateUsers = Annotated[TenantAccess, Depends(RequireTenant("users", "create"))]
CanUpdateUsers = Annotated[TenantAccess, Depends(RequireTenant("users", "update"))]
CanDeleteUsers = Annotated[TenantAccess, Depends(RequireTenant("users", "delete"))]
CanReadRoles = Annotated[TenantAccess, Depends(RequireTenant("roles", "read"))]
CanCreateRoles = Annotated[TenantAccess, Depends(RequireTenant("roles", "create"))]
CanUpdateRoles = Annotated[TenantAccess, Depends(RequireTenant("roles", "update"))]
CanDeleteRoles = Annotated[TenantAccess, Depends(RequireTenant("roles", "delete"))]
CanReadShares = Annotated[TenantAccess, Depends(RequireTenant("shares", "read"))]
CanCreateShares = Annotated[TenantAccess, Depends(RequireTenant("shares", "create"))]
CanUpdateShares = Annotated[TenantAccess, Depends(RequireTenant("shares", "update"))]
CanDeleteShares = Annotated[TenantAccess, Depends(RequireTenant("shares", "delete"))]
CanReadEvents = Annotated[TenantAccess, Depends(RequireTenant("events", "read"))]
CanReadQuotas = Annotated[TenantAccess, Depends(RequireTenant("quotas", "read"))]
CanReadAudit = Annotated[TenantAccess, Depends(RequireTenant("audit", "read"))]
CanReadWebhooks = Annotated[TenantAccess, Depends(RequireTenant("webhooks", "read"))]
CanCreateWebhooks = Annotated[TenantAccess, Depends(RequireTenant("webhooks", "create"))]
CanUpdateWebhooks = Annotated[TenantAccess, Depends(RequireTenant("webhooks", "update"))]
CanDeleteWebhooks = Annotated[TenantAccess, Depends(RequireTenant("webhooks", "delete"))]
CanReadFulfilment = Annotated[TenantAccess, Depends(RequireTenant("fulfilment", "read"))]
CanUpdateFulfilment = Annotated[TenantAccess, Depends(RequireTenant("fulfilment", "update"))]
CanReadExports = Annotated[TenantAccess, Depends(RequireTenant("exports", "read"))]
CanCreateExports = Annotated[TenantAccess, Depends(RequireTenant("exports", "create"))]
CanReadImports = Annotated[TenantAccess, Depends(RequireTenant("imports", "read"))]
CanCreateImports = Annotated[TenantAccess, Depends(RequireTenant("imports", "create"))]
CanUpdateImports = Annotated[TenantAccess, Depends(RequireTenant("imports", "update"))]
AdminPrincipal = Annotated[Principal, Depends(require_admin)]


# What a handler needs beyond its TenantAccess, one small typed dependency each: domains
# never reach into the Runtime (only the wiring that builds a service's collaborators,
# admin.wiring and the oauth routers, takes RuntimeDep).
def _keyring(request: Request) -> TenantKeyring:
    return get_runtime(request).keyring


def _control(request: Request) -> AsyncEngine:
    return get_runtime(request).control


def _settings(request: Request) -> Settings:
    return get_runtime(request).settings


def _job_queue(request: Request) -> Queue:
    """The workers' job queue (saq), for endpoints that hand work to the workers (a
    webhook delivery retried or replayed); one client per app, made on first use."""
    state = request.app.state
    queue: Queue | None = getattr(state, "job_queue", None)
    if queue is None:
        try:
            queue = state.job_queue = queue_for(get_runtime(request).settings)
        except RuntimeError as exc:
            raise ServiceUnavailable("Background jobs need Redis (MERIDIAN_REDIS_URL).") from exc
    return queue


@dataclass(frozen=True, slots=True)
class SignedTenant:
    """A tenant reached without a token, for what a signed URL authorizes instead (a
    presigned download, ``meridian.transfers``): the route checks the URL's signature
    with ``keyring``; this only names the tenant and opens its shard's transactions, as
    the platform."""

    tenant: TenantContext
    keyring: TenantKeyring
    _runtime: Runtime

    def reader(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        runtime = self._runtime
        return runtime.router.reader(self.tenant, on_stale=runtime.refresh_tenant)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        runtime = self._runtime
        async with runtime.router.transaction(
            self.tenant, write=True, on_stale=runtime.refresh_tenant
        ) as session:
            outbox.act_as(session, outbox.SYSTEM)
            yield session


async def signed_tenant(
    request: Request,
    tenant: Annotated[UUID, Query(description="The tenant the signed URL was issued for.")],
) -> SignedTenant | None:
    """The active tenant a signed URL names; None for any other id (the route answers it
    as it answers a wrong signature, so the URL tells nobody which tenants exist)."""
    runtime = get_runtime(request)
    found = await runtime.directory.resolve(tenant)
    if found is None or found.status is not TenantStatus.ACTIVE:
        return None
    if found.shard_id not in runtime.engines.shards:
        await runtime.reload_topology()
    current_tenant_id.set(found.tenant_id)
    return SignedTenant(found, runtime.keyring, runtime)


Keyring = Annotated[TenantKeyring, Depends(_keyring)]
SignedTenantDep = Annotated[SignedTenant | None, Depends(signed_tenant)]
ControlPlane = Annotated[AsyncEngine, Depends(_control)]
PlatformSettings = Annotated[Settings, Depends(_settings)]
JobQueue = Annotated[Queue, Depends(_job_queue)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
