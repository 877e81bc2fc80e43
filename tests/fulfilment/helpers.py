"""Helpers of the fulfilment tests: configure steps, win opportunities, read sagas and
events, and wait for the sagas consumer group."""

from __future__ import annotations

from typing import Any

import httpx
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from meridian.events import bus
from tests.fixtures.api import Tenant

# What a worker of these tests runs with: receivers on 127.0.0.1, retries without delay
# (saq's backoff from 0 s is 0 s; the delays are saq's, not under test here).
WORKER = {"webhook_allow_private_targets": True, "fulfilment_retry_delay": 0.0}


def step(name: str, base: str, *, attempts: int | None = 2, **extra: Any) -> dict[str, Any]:
    """A step calling POST {base}/{name} and, to undo it, POST {base}/{name}/undo."""
    body: dict[str, Any] = {
        "name": name,
        "action": {"method": "POST", "url": f"{base}/{name}"},
        "compensation": {"method": "POST", "url": f"{base}/{name}/undo"},
        **extra,
    }
    if attempts is not None:
        body["attempts"] = attempts
    return body


async def configure(
    client: httpx.AsyncClient, tenant: Tenant, steps: list[dict[str, Any]]
) -> dict[str, Any]:
    resp = await client.put("/v1/fulfilment/steps", json={"steps": steps}, headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def new_opportunity(
    client: httpx.AsyncClient, tenant: Tenant, *, headers: dict[str, str] | None = None, **body: Any
) -> dict[str, Any]:
    headers = headers or tenant.headers
    account = await client.post("/v1/accounts", json={"name": "Acme"}, headers=headers)
    assert account.status_code == 201, account.text
    payload = {
        "account_id": account.json()["id"],
        "name": "Big deal",
        "currency": "EUR",
        "amount": "1200.50",
        **body,
    }
    resp = await client.post("/v1/opportunities", json=payload, headers=headers)
    assert resp.status_code == 201, resp.text
    opportunity: dict[str, Any] = resp.json()
    return opportunity


async def won_stage(client: httpx.AsyncClient, tenant: Tenant) -> str:
    """The won stage of the tenant's default pipeline."""
    resp = await client.get("/v1/pipelines", headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    (default,) = [p for p in resp.json()["data"] if p["is_default"]]
    (won,) = [s for s in default["stages"] if s["kind"] == "won"]
    stage_id: str = won["id"]
    return stage_id


async def win(client: httpx.AsyncClient, tenant: Tenant, opportunity_id: str) -> None:
    stage_id = await won_stage(client, tenant)
    resp = await client.patch(
        f"/v1/opportunities/{opportunity_id}", json={"stage_id": stage_id}, headers=tenant.headers
    )
    assert resp.status_code == 200, resp.text


async def sagas(client: httpx.AsyncClient, tenant: Tenant, opportunity_id: str) -> list[Any]:
    resp = await client.get(
        f"/v1/opportunities/{opportunity_id}/fulfilment", headers=tenant.headers
    )
    assert resp.status_code == 200, resp.text
    data: list[Any] = resp.json()["data"]
    return data


async def events(client: httpx.AsyncClient, tenant: Tenant, type_: str) -> list[dict[str, Any]]:
    resp = await client.get(
        "/v1/events", params={"type": type_, "limit": 200}, headers=tenant.headers
    )
    assert resp.status_code == 200, resp.text
    data: list[dict[str, Any]] = resp.json()["data"]
    return data


# -- the stream and the sagas group ------------------------------------------------------
async def entry_of(redis_url: str, event_id: str) -> bytes | None:
    """The id of the (last) stream entry carrying the event ``event_id``."""
    client: Redis = Redis.from_url(redis_url)
    try:
        entries = await client.xrange(bus.STREAM)
    finally:
        await client.aclose()
    found = [eid for eid, fields in entries if bus.decode(fields)[1].get("id") == event_id]
    return found[-1] if found else None


async def handled_by_sagas(redis_url: str, entry_id: bytes) -> bool:
    """Whether the sagas group has read ``entry_id`` and acknowledged it (other entries
    of the stream, earlier tests' among them, may still be pending)."""
    client: Redis = Redis.from_url(redis_url)
    try:
        groups = await client.xinfo_groups(bus.STREAM)
        pending = await client.xpending_range(
            bus.STREAM, "sagas", min=entry_id, max=entry_id, count=1
        )
    except ResponseError:
        return False  # no group yet
    finally:
        await client.aclose()
    for group in groups:
        if group["name"] in (b"sagas", "sagas"):
            last = group["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else last
            return _stream_id(last) >= _stream_id(entry_id.decode()) and not pending
    return False


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)
