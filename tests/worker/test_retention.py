"""Retention: a tenant's events older than its retention go, unless not yet relayed; a
cursor from before what is kept is refused with 410 instead of resuming with a gap."""

from __future__ import annotations

import asyncpg
import httpx

from meridian.runtime import Runtime
from meridian.settings import Settings
from meridian.worker.retention import prune_expired
from tests.fixtures.api import Tenant
from tests.fixtures.databases import raw_dsn
from tests.fixtures.waiting import eventually
from tests.fixtures.worker import running_worker, stream_events


def shard_db(settings: Settings, shard_id: str) -> str:
    return next(s.dsn.rsplit("/", 1)[1] for s in settings.shards if s.id == shard_id)


async def age_events(settings: Settings, tenant: Tenant, days: int, up_to_seq: int) -> None:
    conn = await asyncpg.connect(raw_dsn(shard_db(settings, tenant.shard_id)))
    try:
        await conn.execute(
            "UPDATE event_outbox SET occurred_at = now() - make_interval(days => $3) "
            "WHERE tenant_id = $1 AND seq <= $2",
            tenant.id,
            up_to_seq,
            days,
        )
    finally:
        await conn.close()


async def test_retention_prunes_old_relayed_events_only(
    app_client: httpx.AsyncClient,
    tenant: Tenant,
    other_tenant: Tenant,
    settings: Settings,
    admin_headers: dict[str, str],
) -> None:
    for i in range(6):
        resp = await app_client.post("/v1/accounts", json={"name": f"A{i}"}, headers=tenant.headers)
        assert resp.status_code == 201
    resp = await app_client.patch(
        f"/admin/v1/tenants/{tenant.id}", json={"event_retention_days": 7}, headers=admin_headers
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["event_retention_days"] == 7
    async with running_worker(settings) as worker:

        async def relayed() -> bool:
            return len(await stream_events(settings.redis_url or "", tenant.id)) >= 6

        await eventually(relayed, what="the events relayed")
        await age_events(settings, tenant, 10, up_to_seq=4)
        deleted = await prune_expired(worker.context.runtime, default_days=30)
    assert deleted >= 4
    resp = await app_client.get("/v1/events", params={"after": 0}, headers=tenant.headers)
    assert [e["seq"] for e in resp.json()["data"]] == [5, 6]
    resp = await app_client.get("/v1/events", params={"after": 2}, headers=tenant.headers)
    assert resp.status_code == 410, resp.text
    assert resp.json()["oldest_seq"] == 5
    resp = await app_client.get("/v1/events", params={"after": 4}, headers=tenant.headers)
    assert resp.status_code == 200
    resp = await app_client.patch(
        f"/admin/v1/tenants/{tenant.id}", json={"event_retention_days": 0}, headers=admin_headers
    )
    assert resp.status_code == 422


async def test_unrelayed_events_are_kept_past_retention(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    resp = await app_client.post("/v1/accounts", json={"name": "Kept"}, headers=tenant.headers)
    assert resp.status_code == 201
    await age_events(settings, tenant, 400, up_to_seq=1)
    runtime = await Runtime.start(settings)
    try:
        await prune_expired(runtime, default_days=30)
        resp = await app_client.get("/v1/events", headers=tenant.headers)
        assert [e["seq"] for e in resp.json()["data"]] == [1]
    finally:
        await runtime.stop()
