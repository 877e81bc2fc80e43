"""The relay: every committed event reaches the stream once per pass, in tenant order."""

from __future__ import annotations

import asyncio

import httpx

from meridian.settings import Settings
from tests.fixtures.api import Tenant
from tests.fixtures.waiting import eventually
from tests.fixtures.worker import running_worker, stream_events


async def create_accounts(client: httpx.AsyncClient, tenant: Tenant, n: int) -> None:
    for i in range(n):
        resp = await client.post("/v1/accounts", json={"name": f"Acme {i}"}, headers=tenant.headers)
        assert resp.status_code == 201, resp.text


async def test_events_reach_the_stream_in_order(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant, settings: Settings
) -> None:
    assert settings.redis_url
    await create_accounts(app_client, tenant, 5)
    await create_accounts(app_client, other_tenant, 2)
    async with running_worker(settings):
        await create_accounts(app_client, tenant, 5)

        async def relayed() -> bool:
            return len(await stream_events(settings.redis_url or "", tenant.id)) >= 10

        await eventually(relayed, what="the events relayed")
    mine = await stream_events(settings.redis_url, tenant.id)
    seqs = [e["seq"] for e in mine]
    assert seqs == list(range(1, len(seqs) + 1))
    assert all(e["type"] == "account.created" for e in mine)
    theirs = await stream_events(settings.redis_url, other_tenant.id)
    assert {e["id"] for e in mine}.isdisjoint({e["id"] for e in theirs})


async def test_two_relays_share_tenants_without_publishing_twice(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    assert settings.redis_url
    await asyncio.gather(*(create_accounts(app_client, tenant, 10) for _ in range(4)))
    async with running_worker(settings), running_worker(settings):

        async def relayed() -> bool:
            return len(await stream_events(settings.redis_url or "", tenant.id)) >= 40

        await eventually(relayed, what="the events relayed")
        await asyncio.sleep(0.5)
    seqs = [e["seq"] for e in await stream_events(settings.redis_url, tenant.id)]
    assert seqs == list(range(1, 41))


async def test_nothing_is_relayed_without_a_worker(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    await create_accounts(app_client, tenant, 2)
    await asyncio.sleep(0.3)
    assert await stream_events(settings.redis_url or "", tenant.id) == []
