"""Accounts, contacts and opportunities for activity and pipeline tests, made through
their own endpoints."""

from __future__ import annotations

from typing import Any

import httpx

from tests.fixtures.api import Tenant


async def _post(client: httpx.AsyncClient, tenant: Tenant, url: str, body: dict[str, Any]) -> str:
    resp = await client.post(url, json=body, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    record_id: str = resp.json()["id"]
    return record_id


async def create_account(client: httpx.AsyncClient, tenant: Tenant, name: str = "Acme") -> str:
    return await _post(client, tenant, "/v1/accounts", {"name": name})


async def create_contact(
    client: httpx.AsyncClient,
    tenant: Tenant,
    *,
    account_id: str | None = None,
    last_name: str = "Doe",
) -> str:
    return await _post(
        client, tenant, "/v1/contacts", {"last_name": last_name, "account_id": account_id}
    )


async def default_pipeline(client: httpx.AsyncClient, tenant: Tenant) -> dict[str, Any]:
    resp = await client.get("/v1/pipelines?is_default=true", headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    (pipeline,) = resp.json()["data"]
    return dict(pipeline)


async def create_opportunity(
    client: httpx.AsyncClient,
    tenant: Tenant,
    *,
    account_id: str,
    pipeline_id: str | None = None,
    stage_id: str | None = None,
    name: str = "Deal",
) -> str:
    body: dict[str, Any] = {"account_id": account_id, "name": name, "currency": "USD"}
    if pipeline_id is not None:
        body |= {"pipeline_id": pipeline_id, "stage_id": stage_id}
    return await _post(client, tenant, "/v1/opportunities", body)
