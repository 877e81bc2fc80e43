"""The cache inside the API: two app instances (separate L1s) on one Redis, and an API
whose Redis dies mid-run."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from meridian.crud.endpoints import record_bucket
from meridian.settings import Settings
from tests.cache.conftest import l2_attempts, l2_skipped
from tests.fixtures.api import instance as api
from tests.fixtures.api import onboard
from tests.fixtures.redis_servers import RedisServer
from tests.fixtures.waiting import eventually


def counter(client: httpx.AsyncClient, level: str, kind: str, result: str) -> float:
    registry = client.app.state.runtime.metrics.registry  # type: ignore[attr-defined]
    value = registry.get_sample_value(
        "meridian_cache_requests_total", {"level": level, "kind": kind, "result": result}
    )
    return value or 0.0


async def subscribed(*instances: httpx.AsyncClient) -> None:
    """Waits until each instance listens for invalidations (they start asynchronously)."""
    for inst in instances:
        cache = inst.app.state.runtime.cache  # type: ignore[attr-defined]
        await eventually(cache.subscribed.is_set, what="the invalidation subscriber")


async def name_on(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> str:
    resp = await client.get(url, headers=headers)
    assert resp.status_code == 200, resp.text
    name: str = resp.json()["name"]
    return name


async def test_write_through_one_instance_is_not_served_stale_by_another(
    settings: Settings, admin_headers: dict[str, str], app_client: httpx.AsyncClient
) -> None:
    tenant = await onboard(app_client, admin_headers, slug=f"cache-{uuid.uuid4().hex[:8]}")
    async with api(settings) as a, api(settings) as b:
        await subscribed(a, b)
        created = await a.post("/v1/accounts", json={"name": "v1"}, headers=tenant.headers)
        acct = created.json()["id"]
        # B caches the record (L1 and Redis).
        for _ in range(3):
            got = await b.get(f"/v1/accounts/{acct}", headers=tenant.headers)
            assert got.json()["name"] == "v1"
        assert counter(b, "l1", "account", "hit") >= 2

        url = f"/v1/accounts/{acct}"
        changed = await a.patch(url, json={"name": "v2"}, headers=tenant.headers)
        assert changed.status_code == 200
        # A reads its own write at once, from its own instance.
        assert await name_on(a, url, tenant.headers) == "v2"

        async def b_has_v2() -> bool:
            name = await name_on(b, url, tenant.headers)
            assert name in {"v1", "v2"}, name
            return name == "v2"

        # B gets the invalidation over pub/sub: some time later, never the old value after.
        await eventually(b_has_v2, what="B serving the new record")
        for _ in range(10):
            assert await name_on(b, url, tenant.headers) == "v2"
        deleted = await a.delete(url, headers=tenant.headers)
        assert deleted.status_code == 204
        assert (await a.get(url, headers=tenant.headers)).status_code == 404

        async def b_has_none() -> bool:
            resp = await b.get(url, headers=tenant.headers)
            assert resp.status_code in {200, 404}, resp.text
            return resp.status_code == 404

        await eventually(b_has_none, what="B forgetting the deleted record")
        for _ in range(10):
            assert (await b.get(url, headers=tenant.headers)).status_code == 404


COOLDOWN = 1.0  # the cache breaker's, in the next test


@pytest.mark.slow
async def test_api_keeps_answering_when_redis_dies_and_recovers(
    tmp_path: Path, settings: Settings, admin_headers: dict[str, str], app_client: httpx.AsyncClient
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    own = settings.model_copy(update={"redis_url": server.url, "cache_cooldown": COOLDOWN})
    try:
        async with api(own) as client:
            cache = client.app.state.runtime.cache  # type: ignore[attr-defined]
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
            tried, skipped = l2_attempts(cache), l2_skipped(cache)
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
            elapsed = time.monotonic() - started
            # 140 requests with Redis gone, each needing several Redis operations: the
            # breaker let through its 3 failures and then one probe per cooldown, and
            # skipped everything else, so no request waited for Redis. (The bound grows
            # with the time taken, so a slow machine loosens it, never breaks it; the
            # extra probe is one that may be in flight as the loop ends.)
            attempted = l2_attempts(cache) - tried
            assert attempted <= 3 + elapsed / COOLDOWN + 1, (attempted, elapsed)
            # Each create bumps the list generation and each update its record bucket's
            # and the list's: 60 generation writes alone, which did not reach Redis.
            assert l2_skipped(cache) - skipped >= 60 - attempted
            got = await client.get(f"/v1/accounts/{ids[0]}", headers=tenant.headers)
            assert got.json()["name"] == "while-down"  # read-your-writes without Redis

            server.start()

            async def back() -> bool:
                await client.get(f"/v1/accounts/{ids[1]}", headers=tenant.headers)
                return not cache.breaker.is_open and cache.subscribed.is_set()

            await eventually(back, interval=0.1, what="the cache going back to Redis")
            # L1 was flushed when Redis came back. This record's L1 entry from before the
            # outage has the same key now (its bucket's generation was 0 then and is 0 on
            # the restarted, empty Redis; only ids[0]'s bucket was written), so without
            # the flush this read would be an L1 hit.
            bucket = record_bucket(uuid.UUID(ids[0]))
            probe = next(i for i in ids[2:] if record_bucket(uuid.UUID(i)) != bucket)
            l1_misses = counter(client, "l1", "account", "miss")
            l2_misses = counter(client, "l2", "account", "miss")
            assert (await client.get(f"/v1/accounts/{probe}", headers=tenant.headers)).json()[
                "id"
            ] == probe
            assert counter(client, "l1", "account", "miss") == l1_misses + 1
            assert counter(client, "l2", "account", "miss") == l2_misses + 1  # Redis asked
    finally:
        server.stop()


async def test_cached_list_pages_follow_writes_on_another_instance(
    settings: Settings, admin_headers: dict[str, str], app_client: httpx.AsyncClient
) -> None:
    tenant = await onboard(app_client, admin_headers, slug=f"list-{uuid.uuid4().hex[:8]}")
    async with api(settings) as a, api(settings) as b:
        await subscribed(a, b)
        await a.post("/v1/accounts", json={"name": "first"}, headers=tenant.headers)
        for _ in range(2):
            page = await b.get("/v1/accounts?sort=name", headers=tenant.headers)
            assert [x["name"] for x in page.json()["data"]] == ["first"]
        assert counter(b, "l1", "account-list", "hit") >= 1
        await a.post("/v1/accounts", json={"name": "second"}, headers=tenant.headers)

        async def b_lists_both() -> bool:
            page = await b.get("/v1/accounts?sort=name", headers=tenant.headers)
            names = [x["name"] for x in page.json()["data"]]
            assert names in (["first"], ["first", "second"]), names
            return names == ["first", "second"]

        await eventually(b_lists_both, what="B listing the new account")
