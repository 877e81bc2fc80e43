"""/healthz, /readyz and /metrics.

Readiness is checked on an app of its own whose control plane, shard and Redis are each
reached through a TCP forwarder (tests/fixtures/tcp_proxy.py): cutting one makes that
dependency unreachable for this app only, while the servers keep serving the rest of the
suite. The app has its own control plane database; its one shard is the session's eu-1
database under another id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

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
                    yield Platform(client, control, shard, redis_proxy)
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


async def test_a_shard_down_is_degraded_not_unready(platform: Platform) -> None:
    await platform.shard.cut()
    try:
        status, state, checks = await readiness(platform.client)
        # The instance still serves every other shard's tenants: it stays in service.
        assert (status, state) == (200, "degraded"), checks
        assert checks[f"shard:{SHARD}"].startswith("down"), checks
        assert checks["control"] == checks["redis"] == "ok"
    finally:
        await platform.shard.restore()
    await ready_again(platform.client)


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
