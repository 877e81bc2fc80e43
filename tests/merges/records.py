"""Helpers of the duplicate and merge tests: records through the API, rows as stored."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx

from tests.fixtures.api import Tenant
from tests.fixtures.engines import Platform

Headers = dict[str, str]
# What changes on a record that was only touched (a reference moved and moved back).
BOOKKEEPING = ("version", "updated_at")


async def post(
    client: httpx.AsyncClient, headers: Headers, path: str, **body: Any
) -> dict[str, Any]:
    resp = await client.post(path, json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    made: dict[str, Any] = resp.json()
    return made


async def get(client: httpx.AsyncClient, headers: Headers, path: str) -> dict[str, Any]:
    resp = await client.get(path, headers=headers)
    assert resp.status_code == 200, resp.text
    found: dict[str, Any] = resp.json()
    return found


async def define(
    client: httpx.AsyncClient, tenant: Tenant, plural: str, **body: Any
) -> dict[str, Any]:
    body.setdefault("label", body["name"].title())
    return await post(client, tenant.headers, f"/v1/objects/{plural}/fields", **body)


async def activity(
    client: httpx.AsyncClient, tenant: Tenant, subject: str, **links: str
) -> dict[str, Any]:
    return await post(
        client,
        tenant.headers,
        "/v1/activities",
        type="call",
        subject=subject,
        occurred_at="2026-06-01T10:00:00Z",
        **links,
    )


async def share(
    client: httpx.AsyncClient, tenant: Tenant, plural: str, record_id: str, user_id: str
) -> dict[str, Any]:
    return await post(client, tenant.headers, f"/v1/{plural}/{record_id}/shares", user_id=user_id)


async def shares_of(
    client: httpx.AsyncClient, tenant: Tenant, plural: str, record_id: str
) -> list[dict[str, Any]]:
    page = await get(client, tenant.headers, f"/v1/{plural}/{record_id}/shares?limit=200")
    data: list[dict[str, Any]] = page["data"]
    return data


async def rows(
    platform: Platform, tenant: Tenant, table: str, ids: list[str]
) -> dict[str, dict[str, Any]]:
    """The rows as stored, read as the superuser (RLS and every cache bypassed)."""
    async with platform.superuser(tenant.shard_id) as conn:
        found = await conn.fetch(
            f'SELECT * FROM "{table}" WHERE tenant_id = $1 AND id = ANY($2::uuid[])',
            uuid.UUID(tenant.id),
            [uuid.UUID(i) for i in ids],
        )
    return {str(r["id"]): dict(r) for r in found}


async def execute(platform: Platform, tenant: Tenant, sql: str, *args: Any) -> str:
    async with platform.superuser(tenant.shard_id) as conn:
        done: str = await conn.execute(sql, *args)
    return done


async def fetch(platform: Platform, tenant: Tenant, sql: str, *args: Any) -> list[Any]:
    async with platform.superuser(tenant.shard_id) as conn:
        found: list[asyncpg.Record] = await conn.fetch(sql, *args)
    return [dict(r) for r in found]


def without(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in keys}
