"""Records, activities and direct reads of the summaries for the projection tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import text

from meridian.projections.jobs import Platform
from meridian.runtime import Runtime
from tenancy.context import TenantContext
from tests.fixtures.api import Tenant

# Every computed column but the two times that say when it was computed.
CONTENT = (
    "record_kind, record_id, last_activity_at, last_activity_type, last_activity_id, "
    "calls_30d, emails_30d, meetings_30d, notes_30d, tasks_30d, activities_30d, "
    "calls_90d, emails_90d, meetings_90d, notes_90d, tasks_90d, activities_90d, "
    "next_task_id, next_task_due_at"
)


def runtime_of(client: httpx.AsyncClient) -> Runtime:
    runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
    return runtime


def platform_of(client: httpx.AsyncClient) -> Platform:
    rt = runtime_of(client)
    return Platform(rt.control, rt.directory, rt.router, rt.refresh_tenant)


async def context_of(client: httpx.AsyncClient, tenant: Tenant) -> TenantContext:
    ctx = await runtime_of(client).directory.resolve(uuid.UUID(tenant.id))
    assert ctx is not None
    return ctx


def ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat()


def ahead(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


async def post(client: httpx.AsyncClient, tenant: Tenant, path: str, **body: Any) -> str:
    resp = await client.post(path, json=body, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    record_id: str = resp.json()["id"]
    return record_id


async def activity(
    client: httpx.AsyncClient, tenant: Tenant, type_: str, occurred_at: str, **links: str
) -> str:
    return await post(
        client,
        tenant,
        "/v1/activities",
        type=type_,
        subject=f"{type_} at {occurred_at}",
        occurred_at=occurred_at,
        **links,
    )


async def summary_rows(client: httpx.AsyncClient, tenant: Tenant) -> list[dict[str, Any]]:
    """The tenant's summaries as stored, without their computation times, by key."""
    ctx = await context_of(client, tenant)
    async with runtime_of(client).router.reader(ctx) as conn:
        rows = await conn.fetch(
            f"SELECT {CONTENT} FROM interaction_summary WHERE tenant_id = $1 "
            "ORDER BY record_kind, record_id",
            ctx.tenant_id,
        )
    return [dict(r) for r in rows]


async def execute(client: httpx.AsyncClient, tenant: Tenant, sql: str, **params: Any) -> None:
    """``sql`` in a write transaction of the tenant, as the app role."""
    ctx = await context_of(client, tenant)
    async with runtime_of(client).router.transaction(ctx, write=True) as session:
        await session.execute(text(sql), {"tenant_id": ctx.tenant_id, **params})
