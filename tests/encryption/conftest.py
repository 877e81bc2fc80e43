"""Helpers of the field-encryption tests: the runtime of the in-process app, contacts
made through the API, and direct (superuser) access to the shard rows."""

from __future__ import annotations

from typing import Any

import httpx

from meridian.runtime import Runtime
from tests.fixtures.api import Tenant


def runtime_of(client: httpx.AsyncClient) -> Runtime:
    rt: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
    return rt


async def new_contact(
    client: httpx.AsyncClient, tenant: Tenant, *, params: dict[str, str] | None = None, **body: Any
) -> dict[str, Any]:
    body.setdefault("last_name", "Lovelace")
    resp = await client.post("/v1/contacts", json=body, headers=tenant.headers, params=params)
    assert resp.status_code == 201, resp.text
    made: dict[str, Any] = resp.json()
    return made


async def search(
    client: httpx.AsyncClient, tenant: Tenant, path: str = "/v1/contacts", **params: str
) -> list[str]:
    resp = await client.get(path, params={**params, "limit": "200"}, headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    return [row["id"] for row in resp.json()["data"]]
