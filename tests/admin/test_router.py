"""Platform-admin API: onboarding, placement, suspension, clients, shards."""

from __future__ import annotations

import uuid

import httpx

from tests.fixtures.api import Tenant, token_for
from tests.fixtures.problems import assert_problem


def _slug(prefix: str = "adm") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def test_onboard_by_region_returns_tenant_and_first_client(
    app_client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    slug = _slug()
    resp = await app_client.post(
        "/admin/v1/tenants",
        json={"slug": slug, "name": "Globex", "region": "eu"},
        headers=admin_headers,
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["slug"] == slug
    assert body["region"] == "eu"
    assert body["shard_id"] == "eu-1"
    assert body["status"] == "active"
    assert body["epoch"] == 1
    assert body["client"]["client_secret"]
    assert resp.headers["location"] == f"/admin/v1/tenants/{body['id']}"
    token = await token_for(
        app_client, body["client"]["client_id"], body["client"]["client_secret"]
    )
    # The default pipeline was seeded on the shard during onboarding.
    pipelines = await app_client.get("/v1/pipelines", headers={"Authorization": f"Bearer {token}"})
    assert pipelines.status_code == 200, pipelines.text
    assert len(pipelines.json()["data"]) == 1

    got = await app_client.get(f"/admin/v1/tenants/{body['id']}", headers=admin_headers)
    assert got.status_code == 200
    assert "client" not in got.json()


async def test_dedicated_shard_and_placement_errors(
    app_client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    resp = await app_client.post(
        "/admin/v1/tenants",
        json={"slug": _slug(), "name": "Big Co", "shard_id": "eu-1"},
        headers=admin_headers,
    )
    assert resp.status_code == 201, resp.text
    assert (resp.json()["shard_id"], resp.json()["region"]) == ("eu-1", "eu")

    mismatch = await app_client.post(
        "/admin/v1/tenants",
        json={"slug": _slug(), "name": "X", "shard_id": "eu-1", "region": "us"},
        headers=admin_headers,
    )
    assert_problem(mismatch, 409, "conflict", "region")  # the named shard is elsewhere
    cases = [
        ({"slug": _slug(), "name": "X", "shard_id": "nope-9"}, "shard_id"),
        ({"slug": _slug(), "name": "X", "region": "ap"}, "region"),
        ({"slug": _slug(), "name": "X"}, "region"),
        ({"slug": "Bad Slug!", "name": "X", "region": "us"}, "slug"),
        ({"slug": _slug(), "name": "X", "region": "us", "extra": 1}, "extra"),
    ]
    for body, field in cases:
        bad = await app_client.post("/admin/v1/tenants", json=body, headers=admin_headers)
        assert_problem(bad, 422, "validation")
        assert field in bad.text, body


async def test_duplicate_slug_conflicts_but_same_idempotency_key_replays(
    app_client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    slug = _slug()
    body = {"slug": slug, "name": "Initech", "region": "us"}
    headers = {**admin_headers, "Idempotency-Key": f"onboard-{slug}"}
    first = await app_client.post("/admin/v1/tenants", json=body, headers=headers)
    assert first.status_code == 201
    replay = await app_client.post("/admin/v1/tenants", json=body, headers=headers)
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    assert replay.json()["client"]["client_id"] == first.json()["client"]["client_id"]
    assert replay.json()["client"]["client_secret"] is None  # secrets are shown once

    other_body = await app_client.post(
        "/admin/v1/tenants", json={**body, "name": "Other"}, headers=headers
    )
    assert other_body.status_code == 422
    dup = await app_client.post("/admin/v1/tenants", json=body, headers=admin_headers)
    assert dup.status_code == 409


async def test_suspend_and_resume(
    app_client: httpx.AsyncClient, admin_headers: dict[str, str], tenant: Tenant
) -> None:
    ok = await app_client.get("/v1/accounts", headers=tenant.headers)
    assert ok.status_code == 200
    sus = await app_client.post(f"/admin/v1/tenants/{tenant.id}/suspend", headers=admin_headers)
    assert sus.status_code == 200
    assert sus.json()["status"] == "suspended"
    denied = await app_client.get("/v1/accounts", headers=tenant.headers)
    assert denied.status_code == 403
    assert denied.json()["type"].endswith("tenant-suspended")
    no_token = await app_client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(tenant.client_id, tenant.client_secret),
    )
    assert no_token.status_code in (400, 401)
    listed = await app_client.get("/admin/v1/tenants?status=suspended", headers=admin_headers)
    assert tenant.id in {t["id"] for t in listed.json()["data"]}

    res = await app_client.post(f"/admin/v1/tenants/{tenant.id}/resume", headers=admin_headers)
    assert res.json()["status"] == "active"
    again = await app_client.get("/v1/accounts", headers=tenant.headers)
    assert again.status_code == 200


async def test_new_client_for_tenant(
    app_client: httpx.AsyncClient, admin_headers: dict[str, str], tenant: Tenant
) -> None:
    headers = {**admin_headers, "Idempotency-Key": "reader-1"}
    resp = await app_client.post(
        f"/admin/v1/tenants/{tenant.id}/clients",
        json={"name": "reporting", "scope": "crm:read"},
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    cred = resp.json()
    replay = await app_client.post(
        f"/admin/v1/tenants/{tenant.id}/clients",
        json={"name": "reporting", "scope": "crm:read"},
        headers=headers,
    )
    assert replay.json()["client_id"] == cred["client_id"]
    assert replay.json()["client_secret"] is None
    token = await token_for(app_client, cred["client_id"], cred["client_secret"])
    auth = {"Authorization": f"Bearer {token}"}
    assert (await app_client.get("/v1/accounts", headers=auth)).status_code == 200
    write = await app_client.post("/v1/accounts", json={"name": "x"}, headers=auth)
    assert write.status_code == 403
    missing = await app_client.post(
        f"/admin/v1/tenants/{uuid.uuid4()}/clients", json={}, headers=admin_headers
    )
    assert missing.status_code == 404


async def test_list_shards_with_counts_and_tenant_pagination(
    app_client: httpx.AsyncClient, admin_headers: dict[str, str], tenant: Tenant
) -> None:
    shards = await app_client.get("/admin/v1/shards", headers=admin_headers)
    assert shards.status_code == 200
    assert shards.json()["next_cursor"] is None  # a list like every other, in one page
    by_id = {s["id"]: s for s in shards.json()["data"]}
    assert {"us-1", "eu-1"} <= set(by_id)
    assert by_id["us-1"]["region"] == "us"
    assert by_id["us-1"]["engine"] == "postgres"  # detected when the shard was added
    assert by_id["us-1"]["tenant_count"] >= 1

    seen: list[str] = []
    cursor = None
    while True:
        url = "/admin/v1/tenants?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await app_client.get(url, headers=admin_headers)).json()
        seen += [t["id"] for t in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert tenant.id in seen


async def test_admin_api_needs_platform_admin(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    for method, url in (
        ("GET", "/admin/v1/tenants"),
        ("GET", "/admin/v1/shards"),
        ("POST", f"/admin/v1/tenants/{tenant.id}/suspend"),
    ):
        anon = await app_client.request(method, url)
        assert anon.status_code == 401
        as_tenant = await app_client.request(method, url, headers=tenant.headers)
        assert as_tenant.status_code == 403
