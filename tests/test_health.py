"""/healthz, /readyz and /metrics.

Readiness is checked on an app of its own whose control plane, shard and Redis are each
reached through a TCP forwarder (tests/fixtures/tcp_proxy.py): cutting one makes that
dependency unreachable for this app only, while the servers keep serving the rest of the
suite. The app has its own control plane database; its one shard is the session's eu-1
database under another id.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meridian.app import create_app
from meridian.operations import migrate_all
from meridian.settings import ShardConfig
from tests.fixtures.api import Tenant
from tests.fixtures.databases import (
    APP_ROLE,
    PG_HOST,
    PG_PORT,
    TestDatabases,
    dsn,
    raw_dsn,
    recreate_database,
)
from tests.fixtures.tcp_proxy import TcpProxy
from tests.fixtures.waiting import eventually

SHARD = "hc-1"


@dataclass
class Platform:
    client: httpx.AsyncClient
    control: TcpProxy
    shard: TcpProxy
    redis: TcpProxy
    control_db: str


@pytest.fixture(scope="module")
async def platform(databases: TestDatabases) -> AsyncIterator[Platform]:
    # Named after the worker's databases: the session's clean-up drops it.
    control_db = f"{databases.prefix}_hc_control"
    shard_db = databases.shards["eu-1"][1]
    await recreate_database(control_db)
    redis = urlsplit(databases.redis_url)
    proxies = [
        TcpProxy(PG_HOST, PG_PORT),
        TcpProxy(PG_HOST, PG_PORT),
        TcpProxy(redis.hostname or "127.0.0.1", redis.port or 6379),
    ]
    for proxy in proxies:
        await proxy.start()
    control, shard, redis_proxy = proxies
    settings = databases.settings(
        control_dsn=dsn(control_db, APP_ROLE, port=control.port),
        control_admin_dsn=dsn(control_db),  # migrations go straight to the server
        shards=[
            ShardConfig(
                id=SHARD,
                region="hc",
                dsn=dsn(shard_db, APP_ROLE, port=shard.port),
                admin_dsn=dsn(shard_db),
            )
        ],
        redis_url=f"redis://127.0.0.1:{redis_proxy.port}{redis.path}",
    )
    await migrate_all(settings)
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1"
            ) as client:
                try:
                    yield Platform(client, control, shard, redis_proxy, control_db)
                finally:
                    # Everything goes away before the app stops: its shutdown meets
                    # reset connections, never one left open and silent behind a
                    # forwarder (a graceful close would wait for it forever).
                    for proxy in proxies:
                        await proxy.cut()
    finally:
        for proxy in proxies:
            await proxy.close()


async def readiness(client: httpx.AsyncClient) -> tuple[int, str, dict[str, str]]:
    resp = await client.get("/readyz")
    body = resp.json()
    return resp.status_code, body["status"], body["checks"]


async def ready_again(client: httpx.AsyncClient) -> None:
    async def ready() -> bool:
        return (await readiness(client))[:2] == (200, "ready")

    await eventually(ready, interval=0.1, what="/readyz answering ready again")


async def test_healthz_answers_without_asking_anything(app_client: httpx.AsyncClient) -> None:
    resp = await app_client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


async def test_ready_when_everything_answers(platform: Platform) -> None:
    assert await readiness(platform.client) == (
        200,
        "ready",
        {"control": "ok", f"shard:{SHARD}": "ok", "redis": "ok"},
    )


async def gauges(client: httpx.AsyncClient, name: str) -> dict[tuple[str, ...], float]:
    """The samples of ``name`` on /metrics, by their label values."""
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    return {
        tuple(s.labels.values()): s.value
        for f in text_string_to_metric_families(resp.text)
        for s in f.samples
        if s.name == name
    }


async def test_a_shard_down_is_degraded_not_unready(platform: Platform) -> None:
    assert await gauges(platform.client, "meridian_shard_up") == {(SHARD,): 1}
    await platform.shard.cut()
    try:
        status, state, checks = await readiness(platform.client)
        # The instance still serves every other shard's tenants: it stays in service.
        assert (status, state) == (200, "degraded"), checks
        assert checks[f"shard:{SHARD}"].startswith("down"), checks
        assert checks["control"] == checks["redis"] == "ok"
        # /metrics tells it too (the shard-down alert's signal).
        assert await gauges(platform.client, "meridian_shard_up") == {(SHARD,): 0}
        assert await gauges(platform.client, "meridian_up") == {("control",): 1, ("redis",): 1}
    finally:
        await platform.shard.restore()
    await ready_again(platform.client)
    assert await gauges(platform.client, "meridian_shard_up") == {(SHARD,): 1}


async def test_metrics_show_how_far_behind_each_unfinished_move_is(platform: Platform) -> None:
    tenant, move = uuid.uuid4(), uuid.uuid4()
    conn = await asyncpg.connect(raw_dsn(platform.control_db))
    try:
        await conn.execute(
            "INSERT INTO tenant (id, slug, name, region, status) "
            "VALUES ($1, $2, 'Lagging', 'hc', 'active')",
            tenant,
            f"lag-{tenant.hex[:8]}",
        )
        # A target on the same database (should a topology reload meet it, it answers):
        # nothing drives the move here (no sweeping in tests).
        await conn.execute(
            "INSERT INTO shard (id, region, dsn, admin_dsn, state) "
            "SELECT 'hc-target', region, dsn, admin_dsn, 'closed' FROM shard WHERE id = $1",
            SHARD,
        )
        await conn.execute(
            "INSERT INTO tenant_move (id, tenant_id, source_shard_id, target_shard_id, epoch, "
            "state, lag_bytes) VALUES ($1, $2, $3, 'hc-target', 1, 'catching_up', 4096)",
            move,
            tenant,
            SHARD,
        )
        lag = "meridian_tenant_move_lag_bytes"
        assert await gauges(platform.client, lag) == {(str(move), SHARD, "hc-target"): 4096}
        await conn.execute("UPDATE tenant_move SET state = 'done' WHERE id = $1", move)
        assert await gauges(platform.client, lag) == {}
    finally:
        await conn.execute("DELETE FROM tenant WHERE id = $1", tenant)  # its moves too
        await conn.execute("DELETE FROM shard WHERE id = 'hc-target'")
        await conn.close()


async def test_redis_down_is_degraded_not_unready(platform: Platform) -> None:
    await platform.redis.cut()
    try:
        status, state, checks = await readiness(platform.client)
        assert (status, state) == (200, "degraded"), checks
        assert checks["redis"].startswith("down"), checks
        assert checks["control"] == checks[f"shard:{SHARD}"] == "ok"
    finally:
        await platform.redis.restore()
    await ready_again(platform.client)


async def test_control_plane_unreachable_is_503(platform: Platform) -> None:
    await platform.control.cut()
    try:
        status, state, checks = await readiness(platform.client)
        # Without the control plane this instance can serve no tenant at all.
        assert (status, state) == (503, "unavailable"), checks
        assert checks["control"].startswith("down"), checks
        # Liveness is about the process only: it must not get the instance restarted.
        live = await platform.client.get("/healthz")
        assert (live.status_code, live.json()) == (200, {"status": "ok"})
    finally:
        await platform.control.restore()
    await ready_again(platform.client)


async def test_metrics_expose_the_cache_counters(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    made = await app_client.post("/v1/accounts", json={"name": "M"}, headers=tenant.headers)
    assert made.status_code == 201, made.text
    for _ in range(2):  # a miss that loads, then an in-process hit
        got = await app_client.get(f"/v1/accounts/{made.json()['id']}", headers=tenant.headers)
        assert got.status_code == 200, got.text

    resp = await app_client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    assert {
        "meridian_cache_requests",
        "meridian_cache_load_seconds",
        "meridian_cache_invalidation_lag_seconds",
        "meridian_cache_l2_errors",
    } <= set(families), sorted(families)
    requests = {
        (s.labels["level"], s.labels["kind"], s.labels["result"]): s.value
        for s in families["meridian_cache_requests"].samples
        if s.name == "meridian_cache_requests_total"
    }
    assert requests[("l1", "account", "miss")] >= 1, requests
    assert requests[("l1", "account", "hit")] >= 1, requests
    loads = [
        s
        for s in families["meridian_cache_load_seconds"].samples
        if s.name == "meridian_cache_load_seconds_count" and s.labels["kind"] == "account"
    ]
    assert loads
    assert loads[0].value >= 1
