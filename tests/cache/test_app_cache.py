"""The cache inside the API: two app instances (separate L1s) on one Redis, and an API
whose Redis dies mid-run."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from meridian.app import create_app
from meridian.settings import Settings
from tests.fixtures.api import Tenant, onboard
from tests.fixtures.redis_servers import RedisServer


@asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def counter(client: httpx.AsyncClient, level: str, kind: str, result: str) -> float:
    registry = client.app.state.runtime.metrics  # type: ignore[attr-defined]
    value = registry.get_sample_value(
        "meridian_cache_requests_total", {"level": level, "kind": kind, "result": result}
    )
    return value or 0.0


async def test_write_through_one_instance_is_not_served_stale_by_another(
    settings: Settings, admin_headers: dict[str, str], app_client: httpx.AsyncClient
) -> None:
    tenant = await onboard(app_client, admin_headers, slug=f"cache-{uuid.uuid4().hex[:8]}")
    async with api(settings) as a, api(settings) as b:
        for inst in (a, b):
            await asyncio.wait_for(inst.app.state.runtime.cache.subscribed.wait(), 5)  # type: ignore[attr-defined]
        created = await a.post("/v1/accounts", json={"name": "v1"}, headers=tenant.headers)
        acct = created.json()["id"]
        # B caches the record (L1 and Redis).
        for _ in range(3):
            got = await b.get(f"/v1/accounts/{acct}", headers=tenant.headers)
            assert got.json()["name"] == "v1"
        assert counter(b, "l1", "account", "hit") >= 2

        changed = await a.patch(f"/v1/accounts/{acct}", json={"name": "v2"}, headers=tenant.headers)
        assert changed.status_code == 200
        started = time.monotonic()
        while (await b.get(f"/v1/accounts/{acct}", headers=tenant.headers)).json()["name"] != "v2":
            assert time.monotonic() - started < 1.0, "B served the old record for over 1 s"
            await asyncio.sleep(0.001)
        lag = time.monotonic() - started
        for _ in range(10):  # never back to the old value once the invalidation arrived
            assert (await b.get(f"/v1/accounts/{acct}", headers=tenant.headers)).json()[
                "name"
            ] == "v2"
        # A reads its own write at once, from its own instance.
        assert (await a.get(f"/v1/accounts/{acct}", headers=tenant.headers)).json()["name"] == "v2"
        deleted = await a.delete(f"/v1/accounts/{acct}", headers=tenant.headers)
        assert deleted.status_code == 204
        started = time.monotonic()
        while (await b.get(f"/v1/accounts/{acct}", headers=tenant.headers)).status_code != 404:
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.001)
    print(f"cross-instance invalidation seen after {lag * 1000:.1f} ms")


async def test_cached_reads_stay_tenant_scoped(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    acct = (
        await app_client.post("/v1/accounts", json={"name": "A"}, headers=tenant.headers)
    ).json()
    for _ in range(2):
        assert (
            await app_client.get(f"/v1/accounts/{acct['id']}", headers=tenant.headers)
        ).status_code == 200
        assert (
            await app_client.get(f"/v1/accounts/{acct['id']}", headers=other_tenant.headers)
        ).status_code == 404


@pytest.mark.slow
async def test_api_keeps_answering_when_redis_dies_and_recovers(
    tmp_path: Path, settings: Settings, admin_headers: dict[str, str], app_client: httpx.AsyncClient
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    own = settings.model_copy(update={"redis_url": server.url, "cache_cooldown": 0.3})
    try:
        async with api(own) as client:
            tenant = await onboard(client, admin_headers, slug=f"deg-{uuid.uuid4().hex[:8]}")
            ids = []
            for i in range(5):
                r = await client.post(
                    "/v1/accounts", json={"name": f"a{i}"}, headers=tenant.headers
                )
                ids.append(r.json()["id"])
            for acct in ids:
                assert (
                    await client.get(f"/v1/accounts/{acct}", headers=tenant.headers)
                ).status_code == 200

            server.stop()
            started = time.monotonic()
            for _ in range(20):
                for acct in ids:
                    r = await client.get(f"/v1/accounts/{acct}", headers=tenant.headers)
                    assert r.status_code == 200, r.text
                made = await client.post("/v1/accounts", json={"name": "x"}, headers=tenant.headers)
                assert made.status_code == 201
                upd = await client.patch(
                    f"/v1/accounts/{ids[0]}", json={"name": "while-down"}, headers=tenant.headers
                )
                assert upd.status_code == 200
            # 140 requests with Redis gone: the breaker keeps timeouts from piling up.
            assert time.monotonic() - started < 10
            got = await client.get(f"/v1/accounts/{ids[0]}", headers=tenant.headers)
            assert got.json()["name"] == "while-down"  # read-your-writes without Redis

            server.start()
            runtime = client.app.state.runtime  # type: ignore[attr-defined]
            deadline = time.monotonic() + 10
            while runtime.cache.breaker.is_open or not runtime.cache.subscribed.is_set():
                await client.get(f"/v1/accounts/{ids[1]}", headers=tenant.headers)
                assert time.monotonic() < deadline, "the cache did not go back to Redis"
                await asyncio.sleep(0.1)
            before = counter(client, "l2", "account", "miss")
            await client.get(f"/v1/accounts/{ids[2]}", headers=tenant.headers)
            # L1 was flushed when Redis came back, so this read went to Redis again.
            assert counter(client, "l2", "account", "miss") > before
    finally:
        server.stop()


async def test_cached_list_pages_follow_writes_on_another_instance(
    settings: Settings, admin_headers: dict[str, str], app_client: httpx.AsyncClient
) -> None:
    tenant = await onboard(app_client, admin_headers, slug=f"list-{uuid.uuid4().hex[:8]}")
    async with api(settings) as a, api(settings) as b:
        for inst in (a, b):
            await asyncio.wait_for(inst.app.state.runtime.cache.subscribed.wait(), 5)  # type: ignore[attr-defined]
        await a.post("/v1/accounts", json={"name": "first"}, headers=tenant.headers)
        for _ in range(2):
            page = await b.get("/v1/accounts?sort=name", headers=tenant.headers)
            assert [x["name"] for x in page.json()["data"]] == ["first"]
        assert counter(b, "l1", "account-list", "hit") >= 1
        await a.post("/v1/accounts", json={"name": "second"}, headers=tenant.headers)
        started = time.monotonic()
        while (
            len((await b.get("/v1/accounts?sort=name", headers=tenant.headers)).json()["data"]) != 2
        ):
            assert time.monotonic() - started < 1.0, "B served the old page for over 1 s"
            await asyncio.sleep(0.001)
