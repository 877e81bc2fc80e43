"""Platform-admin API (``/admin/v1``): tenants and shards. Needs ``platform:admin``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from starlette.responses import Response

from cache.ratelimit import QuotaState
from meridian.admin.moves import moves_admin
from meridian.admin.schemas import (
    ClientCreate,
    ClientCredentials,
    LimitsRead,
    LimitsUpdate,
    MoveCreate,
    MoveRead,
    ShardRead,
    TenantChange,
    TenantCreate,
    TenantCreated,
    TenantIsolate,
    TenantIsolation,
    TenantRead,
)
from meridian.admin.service import tenant_admin
from meridian.admin.wiring import admin_deps
from meridian.crud.http import IdempotencyKeyHeader, LimitQuery, stored_response
from meridian.crud.idempotency import StoredResponse
from meridian.crud.schemas import Page
from meridian.deps import AdminPrincipal, RuntimeDep
from meridian.errors import (
    Conflict,
    DedicatedShardOccupied,
    IdempotencyKeyReused,
    NotFound,
    invalid_field,
)
from meridian.oauth.schemas import TokensRevoked
from meridian.quotas import service as quotas
from meridian.quotas.schemas import Quotas
from meridian.settings import LIMIT_NAMES, Settings
from meridian.web import ratelimit
from meridian.web.openapi import problems
from meridian.web.responses import json_response
from sharding.models import MoveState
from tenancy.context import TenantStatus

router = APIRouter(prefix="/admin/v1", tags=["admin"])


@router.post(
    "/tenants",
    status_code=201,
    response_model=TenantCreated,
    openapi_extra=problems(Conflict, DedicatedShardOccupied),
)
async def create_tenant(
    body: TenantCreate,
    rt: RuntimeDep,
    _: AdminPrincipal,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    _known_plan(rt.settings, body.plan)
    # Not endpoints.create: onboarding spans the control plane and a shard, so it
    # resumes (the service) rather than replaying a stored response.
    row, created_now = await tenant_admin.onboard(admin_deps(rt), body, idempotency_key)
    headers = {"Location": f"/admin/v1/tenants/{row['id']}"}
    return stored_response(StoredResponse(201, row, headers, replayed=not created_now))


@router.get("/tenants", response_model=Page[TenantRead])
async def list_tenants(
    rt: RuntimeDep,
    _: AdminPrincipal,
    limit: LimitQuery = 50,
    cursor: Annotated[
        UUID | None, Query(description="The next_cursor of the previous page.")
    ] = None,
    status: TenantStatus | None = None,
    region: Annotated[str | None, Query(max_length=32)] = None,
    shard_id: Annotated[str | None, Query(max_length=63)] = None,
) -> Response:
    rows = await tenant_admin.list_tenants(
        admin_deps(rt),
        status=status.value if status else None,
        region=region,
        shard_id=shard_id,
        after=cursor,
        limit=limit,
    )
    next_cursor = str(rows[limit - 1]["id"]) if len(rows) > limit else None
    return json_response({"data": rows[:limit], "next_cursor": next_cursor})


@router.get("/tenants/{tenant_id}", response_model=TenantRead)
async def get_tenant(tenant_id: UUID, rt: RuntimeDep, _: AdminPrincipal) -> Response:
    return json_response(await tenant_admin.get(admin_deps(rt), tenant_id))


@router.patch("/tenants/{tenant_id}", response_model=TenantRead)
async def change_tenant(
    tenant_id: UUID, body: TenantChange, rt: RuntimeDep, _: AdminPrincipal
) -> Response:
    """Change a tenant's settings: ``event_retention_days`` (null restores the platform
    default; shorter retention deletes older events at the next hourly pass)."""
    changes = body.model_dump(include=body.model_fields_set)
    return json_response(await tenant_admin.configure(admin_deps(rt), tenant_id, changes))


@router.get("/tenants/{tenant_id}/limits", response_model=LimitsRead)
async def get_tenant_limits(tenant_id: UUID, rt: RuntimeDep, _: AdminPrincipal) -> Response:
    """The tenant's limits: its plan's, or its own where they were set."""
    return json_response(_limits(rt.settings, await tenant_admin.get(admin_deps(rt), tenant_id)))


@router.get("/tenants/{tenant_id}/quotas", response_model=Quotas)
async def get_tenant_quotas(tenant_id: UUID, rt: RuntimeDep, _: AdminPrincipal) -> Response:
    """What the tenant may use and what it uses now: its requests per minute and per
    day as every instance counted them up to its last share (a tenth of a second ago;
    its callers' own per-minute quotas are not shown), and its records per object and
    stored bytes, counted on its shard."""
    await tenant_admin.get(admin_deps(rt), tenant_id)  # 404 for a tenant never known
    tenant = await rt.directory.resolve(tenant_id)
    if tenant is None or tenant.status is TenantStatus.DELETED:
        raise NotFound(f"Tenant {tenant_id} was deleted.")
    if tenant.status is TenantStatus.PROVISIONING:
        raise Conflict(f"Tenant {tenant_id} is still being provisioned.")
    limits = rt.settings.limits_of(tenant.plan, dict(tenant.limits))
    states: tuple[QuotaState, ...] = ()
    if rt.limiter is not None:
        states = await rt.limiter.standing(ratelimit.tenant_quotas(rt.limiter, limits, tenant))
    async with rt.router.reader(tenant, on_stale=rt.refresh_tenant) as conn:
        counted = await quotas.stored(conn, tenant.tenant_id, limits)
    data = [*quotas.requests(limits, states, caller=False), *counted]
    return json_response({"plan": tenant.plan, "data": data})


@router.put("/tenants/{tenant_id}/limits", response_model=LimitsRead)
async def put_tenant_limits(
    tenant_id: UUID, body: LimitsUpdate, rt: RuntimeDep, _: AdminPrincipal
) -> Response:
    """Set the tenant's plan (left out: unchanged) and its own limits (null or left out:
    its plan's). Every instance applies them at its next request for the tenant (the
    directory entries are dropped)."""
    own = body.model_dump(exclude={"plan"}, exclude_none=True)
    changes: dict[str, object] = {"limits": own}
    if body.plan is not None:
        changes["plan"] = _known_plan(rt.settings, body.plan)
    row = await tenant_admin.configure(admin_deps(rt), tenant_id, changes)
    return json_response(_limits(rt.settings, row))


def _known_plan(settings: Settings, plan: str) -> str:
    """``plan`` if the deployment has it (``MERIDIAN_PLANS``), else 422."""
    if plan not in settings.plans:
        known = ", ".join(sorted(settings.plans))
        raise invalid_field("plan", f"no plan {plan!r}; the plans: {known}")
    return plan


def _limits(settings: Settings, row: Mapping[str, Any]) -> dict[str, Any]:
    own: Mapping[str, int] = row["limits"] or {}
    limits = settings.limits_of(row["plan"], own)
    return {
        "tenant_id": row["id"],
        "plan": row["plan"],
        **limits.model_dump(),
        "overridden": [name for name in LIMIT_NAMES if name in own],
    }


@router.post(
    "/tenants/{tenant_id}/suspend", response_model=TenantRead, openapi_extra=problems(Conflict)
)
async def suspend_tenant(tenant_id: UUID, rt: RuntimeDep, _: AdminPrincipal) -> Response:
    """Naturally idempotent: suspending a suspended tenant changes nothing."""
    row = await tenant_admin.set_status(
        admin_deps(rt), tenant_id, to=TenantStatus.SUSPENDED, allowed_from={TenantStatus.ACTIVE}
    )
    return json_response(row)


@router.post(
    "/tenants/{tenant_id}/resume", response_model=TenantRead, openapi_extra=problems(Conflict)
)
async def resume_tenant(tenant_id: UUID, rt: RuntimeDep, _: AdminPrincipal) -> Response:
    """Naturally idempotent: resuming an active tenant changes nothing."""
    row = await tenant_admin.set_status(
        admin_deps(rt), tenant_id, to=TenantStatus.ACTIVE, allowed_from={TenantStatus.SUSPENDED}
    )
    return json_response(row)


@router.delete("/tenants/{tenant_id}", response_model=TenantRead)
async def delete_tenant(tenant_id: UUID, rt: RuntimeDep, _: AdminPrincipal) -> Response:
    """Crypto-shredding: destroys the tenant's data keys, then marks it deleted. Its
    rows on the shard become unreadable to anyone; its tokens are refused. Idempotent."""
    return json_response(await tenant_admin.delete(admin_deps(rt), tenant_id))


# 409: two requests with one Idempotency-Key racing for its unique index.
@router.post(
    "/tenants/{tenant_id}/clients",
    status_code=201,
    response_model=ClientCredentials,
    openapi_extra=problems(Conflict),
)
async def create_tenant_client(
    tenant_id: UUID,
    body: ClientCreate,
    rt: RuntimeDep,
    _: AdminPrincipal,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    client, created_now = await tenant_admin.add_client(
        admin_deps(rt), tenant_id, body, idempotency_key
    )
    return stored_response(StoredResponse(201, client, replayed=not created_now))


@router.post("/tenants/{tenant_id}/revoke-tokens", response_model=TokensRevoked)
async def revoke_tenant_tokens(tenant_id: UUID, rt: RuntimeDep, _: AdminPrincipal) -> Response:
    """Emergency revocation: all tokens of the tenant issued before now are refused, on
    every API instance within a second; tokens issued afterwards work."""
    return json_response(await tenant_admin.revoke_tokens(admin_deps(rt), tenant_id))


@router.post(
    "/tenants/{tenant_id}/isolate",
    response_model=TenantIsolation,
    openapi_extra=problems(Conflict),
)
async def isolate_tenant(
    tenant_id: UUID, rt: RuntimeDep, _: AdminPrincipal, body: TenantIsolate | None = None
) -> Response:
    """On a Citus shard: puts the tenant in a shard group of its own and, when ``node``
    is given, moves that group to that worker, online (the tenant keeps being served).
    Idempotent: a step already done is skipped. 409 on a PostgreSQL shard, or when the
    shard's admin role cannot copy every row; 422 for a node that is not a worker."""
    row = await tenant_admin.isolate(
        admin_deps(rt), tenant_id, node=body.node if body is not None else None
    )
    return json_response(row)


@router.post(
    "/tenants/{tenant_id}/moves",
    status_code=201,
    response_model=MoveRead,
    openapi_extra=problems(Conflict, IdempotencyKeyReused),
)
async def move_tenant(
    tenant_id: UUID,
    body: MoveCreate,
    rt: RuntimeDep,
    _: AdminPrincipal,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Moves the tenant to another shard (``target_shard_id``) or region (``region``:
    the least-loaded active shard there), online: the answer comes at once with the
    move ``planned``, and this instance drives it in the background; follow it at its
    ``Location``. The tenant is served throughout, but for a write freeze of well under
    a second at the switch, during which its writes wait (up to 2 s, then 503 with
    Retry-After). Its region and residency change only when the move completes.

    404: no such tenant or shard; 409: the tenant is on that shard (or region) already,
    has a move that is not finished, or a shard cannot take part (the detail says
    why: its engine, its WAL level, its schema revision); 422: a region with no shard
    or no active shard with room."""
    row, created_now = await moves_admin.start(admin_deps(rt), tenant_id, body, idempotency_key)
    headers = {"Location": f"/admin/v1/moves/{row['id']}"}
    return stored_response(StoredResponse(201, row, headers, replayed=not created_now))


@router.get("/moves", response_model=Page[MoveRead])
async def list_moves(
    rt: RuntimeDep,
    _: AdminPrincipal,
    limit: LimitQuery = 50,
    cursor: Annotated[
        UUID | None, Query(description="The next_cursor of the previous page.")
    ] = None,
    tenant_id: UUID | None = None,
    state: MoveState | None = None,
) -> Response:
    """Moves, newest first."""
    rows, next_id = await moves_admin.list_moves(
        admin_deps(rt), tenant_id=tenant_id, state=state, limit=limit, before=cursor
    )
    return json_response({"data": rows, "next_cursor": str(next_id) if next_id else None})


@router.get("/moves/{move_id}", response_model=MoveRead)
async def get_move(move_id: UUID, rt: RuntimeDep, _: AdminPrincipal) -> Response:
    """Where the move stands: its state, rows copied of the total per table, the
    replication lag, the verification, the write freeze, the error that stopped it."""
    return json_response(await moves_admin.get(admin_deps(rt), move_id))


@router.post("/moves/{move_id}/cancel", response_model=MoveRead, openapi_extra=problems(Conflict))
async def cancel_move(move_id: UUID, rt: RuntimeDep, _: AdminPrincipal) -> Response:
    """Rolls the move back (in the background; it ends ``cancelled``): the tenant stays
    on its shard, the target keeps nothing of it. 409 once the move has switched the
    tenant to its target or has finished."""
    return json_response(await moves_admin.cancel(admin_deps(rt), move_id))


@router.post("/moves/{move_id}/resume", response_model=MoveRead, openapi_extra=problems(Conflict))
async def resume_move(move_id: UUID, rt: RuntimeDep, _: AdminPrincipal) -> Response:
    """Drives an unfinished move from where it stands, in the background: after its
    driver died, or once the shard that stopped it is back. 409 when it has finished."""
    return json_response(await moves_admin.resume(admin_deps(rt), move_id))


@router.get("/shards", response_model=Page[ShardRead])
async def list_shards(rt: RuntimeDep, _: AdminPrincipal) -> Response:
    """The topology with tenant counts, as one page (a platform has few shards)."""
    return json_response({"data": await tenant_admin.shards(admin_deps(rt)), "next_cursor": None})
