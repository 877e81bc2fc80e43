"""What the custom field tests share: defining a field, a contact with custom values,
the ids a filter lists."""

from __future__ import annotations

from typing import Any

import httpx

from tests.fixtures.api import Tenant


async def define(
    client: httpx.AsyncClient, tenant: Tenant, plural: str, **body: Any
) -> dict[str, Any]:
    body.setdefault("label", body["name"].title())
    resp = await client.post(f"/v1/objects/{plural}/fields", json=body, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    made: dict[str, Any] = resp.json()
    return made


async def contact(client: httpx.AsyncClient, tenant: Tenant, **custom: Any) -> httpx.Response:
    return await client.post(
        "/v1/contacts", json={"last_name": "Field", "custom": custom}, headers=tenant.headers
    )


async def ids(client: httpx.AsyncClient, tenant: Tenant, plural: str, flt: str) -> set[str]:
    resp = await client.get(f"/v1/{plural}", params={"filter": flt}, headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    return {r["id"] for r in resp.json()["data"]}
