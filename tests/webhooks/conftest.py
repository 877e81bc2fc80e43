"""Fixtures and helpers of the webhooks tests."""

from __future__ import annotations

from typing import Any

import httpx

from tests.fixtures.api import Tenant

__all__ = ["contact", "events_of", "subscribe"]


async def subscribe(
    client: httpx.AsyncClient, tenant: Tenant, url: str, *types: str, **body: Any
) -> dict[str, Any]:
    """A new subscription (with its secret) to ``types`` (default: everything)."""
    payload = {"url": url, "event_types": list(types) or ["*"], **body}
    resp = await client.post("/v1/webhooks", json=payload, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    made: dict[str, Any] = resp.json()
    return made


async def contact(client: httpx.AsyncClient, tenant: Tenant, **body: Any) -> dict[str, Any]:
    body.setdefault("last_name", "Lovelace")
    resp = await client.post("/v1/contacts", json=body, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    made: dict[str, Any] = resp.json()
    return made


async def events_of(
    client: httpx.AsyncClient, tenant: Tenant, **params: Any
) -> list[dict[str, Any]]:
    resp = await client.get("/v1/events", params={"limit": 200, **params}, headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    data: list[dict[str, Any]] = resp.json()["data"]
    return data
