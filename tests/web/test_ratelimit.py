"""Rate limits through the API: the IETF headers on every tenant answer (errors too),
429 problem+json with Retry-After once a caller's or the tenant's quota is spent, other
callers and tenants untouched, the admin API that sets them, and Redis killed under it:
per-process buckets, never an error."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx

from meridian.settings import Settings
from tests.fixtures.api import Tenant, instance
from tests.fixtures.problems import assert_problem
from tests.fixtures.redis_servers import RedisServer
from tests.roles.helpers import role_headers

POLICY = re.compile(r'^"tenant";q=(\d+);w=60, "caller";q=(\d+);w=60, "day";q=(\d+);w=86400$')
STATE = re.compile(r'^"tenant";r=(\d+);t=(\d+), "caller";r=(\d+);t=(\d+), "day";r=(\d+);t=(\d+)$')


def _state(resp: httpx.Response) -> tuple[int, int]:
    """What is left of the tenant's and the caller's quotas."""
    found = STATE.match(resp.headers["ratelimit"])
    assert found, resp.headers["ratelimit"]
    return int(found[1]), int(found[3])


async def _limit(
    client: httpx.AsyncClient, admin: dict[str, str], tenant: Tenant, **body: object
) -> httpx.Response:
    return await client.put(f"/admin/v1/tenants/{tenant.id}/limits", json=body, headers=admin)


async def test_every_answer_carries_the_headers(
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tenant: Tenant,
    settings: Settings,
) -> None:
    plan = settings.plans["standard"]
    ok = await app_client.get("/v1/contacts", headers=tenant.headers)
    assert ok.status_code == 200
    policy = POLICY.match(ok.headers["ratelimit-policy"])
    assert policy is not None
    assert policy.groups() == tuple(
        str(n) for n in (plan.tenant_per_minute, plan.caller_per_minute, plan.calls_per_day)
    )
    # Quotas slow enough that no request comes back between two calls (one every 6 and
    # 12 s): each answer, an error too, shows one less.
    await _limit(app_client, admin_headers, tenant, tenant_per_minute=10, caller_per_minute=5)
    first = await app_client.get("/v1/contacts", headers=tenant.headers)
    assert _state(first) == (9, 4)
    missing = await app_client.get(f"/v1/contacts/{uuid.uuid4()}", headers=tenant.headers)
    assert missing.status_code == 404
    assert _state(missing) == (8, 3)
    invalid = await app_client.post("/v1/contacts", json={}, headers=tenant.headers)
    assert invalid.status_code == 422
    assert _state(invalid) == (7, 2)
    # No token, no tenant: nothing was counted, so nothing is said.
    anonymous = await app_client.get("/v1/contacts")
    assert anonymous.status_code == 401
    assert "ratelimit" not in anonymous.headers


async def test_a_spent_quota_is_429_for_that_caller_then_for_the_tenant(
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tenant: Tenant,
    other_tenant: Tenant,
) -> None:
    registry = app_client.app.state.runtime.metrics.registry  # type: ignore[attr-defined]

    def turned_away(quota: str) -> float:
        value = registry.get_sample_value("meridian_rate_limited_total", {"quota": quota})
        return float(value or 0)

    before = {q: turned_away(q) for q in ("tenant", "caller")}
    set_ = await _limit(app_client, admin_headers, tenant, tenant_per_minute=5, caller_per_minute=3)
    assert set_.status_code == 200, set_.text
    shown = set_.json()
    assert (shown["tenant_id"], shown["plan"]) == (tenant.id, "standard")
    assert (shown["tenant_per_minute"], shown["caller_per_minute"]) == (5, 3)
    assert shown["overridden"] == ["tenant_per_minute", "caller_per_minute"]
    for left in (2, 1, 0):
        resp = await app_client.get("/v1/contacts", headers=tenant.headers)
        assert resp.status_code == 200, resp.text
        assert _state(resp)[1] == left
    refused = await app_client.get("/v1/contacts", headers=tenant.headers)
    problem = assert_problem(refused, 429, "rate-limited")
    assert (problem["quota"], problem["limit"]) == ("caller", 3)
    # One request every 20 s at three a minute (less the moments the test took).
    assert 18 <= int(refused.headers["retry-after"]) <= 20
    assert _state(refused) == (2, 0)
    # Another caller of the tenant has its own quota, until the tenant's is spent.
    reader = await role_headers(app_client, tenant, "read_only", scope="crm:read")
    for _ in range(2):
        assert (await app_client.get("/v1/contacts", headers=reader)).status_code == 200
    spent = await app_client.get("/v1/contacts", headers=reader)
    assert assert_problem(spent, 429, "rate-limited")["quota"] == "tenant"
    # Writes are refused alike, and nothing is written.
    write = await app_client.post("/v1/accounts", json={"name": "X"}, headers=tenant.headers)
    assert write.status_code == 429
    # /metrics counts them by quota.
    assert turned_away("caller") - before["caller"] == 1
    assert turned_away("tenant") - before["tenant"] == 2
    # Other tenants are not touched.
    other = await app_client.get("/v1/contacts", headers=other_tenant.headers)
    assert other.status_code == 200
    # Back to the plan's: the quotas apply at once, with what is left of them.
    reset = await _limit(app_client, admin_headers, tenant)
    assert reset.json()["overridden"] == []
    assert (await app_client.get("/v1/contacts", headers=tenant.headers)).status_code == 200


async def test_the_admin_api(
    app_client: httpx.AsyncClient, admin_headers: dict[str, str], tenant: Tenant
) -> None:
    path = f"/admin/v1/tenants/{tenant.id}/limits"
    got = await app_client.get(path, headers=admin_headers)
    assert got.status_code == 200
    assert got.json()["overridden"] == []
    free = await _limit(app_client, admin_headers, tenant, plan="free", caller_per_minute=50)
    assert (free.json()["plan"], free.json()["caller_per_minute"]) == ("free", 50)
    shown = await app_client.get(f"/admin/v1/tenants/{tenant.id}", headers=admin_headers)
    assert (shown.json()["plan"], shown.json()["limits"]) == ("free", {"caller_per_minute": 50})
    for body in (
        {"plan": "platinum"},
        {"caller_per_minute": 0},
        {"tenant_per_minute": 10_000_000},
        {"tenant_per_minute": "many"},
    ):
        assert_problem(await _limit(app_client, admin_headers, tenant, **body), 422, "validation")
    missing = await app_client.put(
        f"/admin/v1/tenants/{uuid.uuid4()}/limits", json={}, headers=admin_headers
    )
    assert_problem(missing, 404, "not-found")
    # A tenant cannot raise its own limits.
    own = await app_client.put(path, json={"tenant_per_minute": 600_000}, headers=tenant.headers)
    assert own.status_code in (401, 403)


async def test_redis_killed_the_limits_hold_per_process_without_an_error(
    settings: Settings,
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tenant: Tenant,
    tmp_path: Path,
) -> None:
    await _limit(app_client, admin_headers, tenant, caller_per_minute=6)
    server = RedisServer(tmp_path / "redis")
    server.start()
    own = settings.model_copy(update={"redis_url": server.url, "rate_limit_timeout": 0.5})
    try:
        async with instance(own) as client:
            first = await client.get("/v1/contacts", headers=tenant.headers)
            assert first.status_code == 200
            assert _state(first)[1] == 5
            server.stop()
            statuses = [
                (await client.get("/v1/contacts", headers=tenant.headers)).status_code
                for _ in range(6)
            ]
            # This process counts on by itself: the five left pass, then 429.
            assert statuses == [200] * 5 + [429], statuses
            last = await client.get("/v1/contacts", headers=tenant.headers)
            assert "ratelimit" in last.headers
            assert "retry-after" in last.headers
    finally:
        server.stop()
