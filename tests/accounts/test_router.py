from __future__ import annotations

import httpx

from tests.fixtures.api import Tenant


async def test_account_crud(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    resp = await app_client.post(
        "/v1/accounts", json={"name": "Acme", "domain": "Acme.com"}, headers=tenant.headers
    )
    assert resp.status_code == 201, resp.text
    acct = resp.json()
    assert acct["domain"] == "acme.com"
    assert resp.headers["etag"] == '"1"'
    assert resp.headers["location"].endswith(acct["id"])

    got = await app_client.get(f"/v1/accounts/{acct['id']}", headers=tenant.headers)
    assert got.status_code == 200
    assert got.json() == acct

    upd = await app_client.patch(
        f"/v1/accounts/{acct['id']}",
        json={"name": "Acme Inc"},
        headers={**tenant.headers, "If-Match": '"1"'},
    )
    assert upd.status_code == 200, upd.text
    assert upd.json()["version"] == 2

    stale = await app_client.patch(
        f"/v1/accounts/{acct['id']}",
        json={"name": "X"},
        headers={**tenant.headers, "If-Match": '"1"'},
    )
    assert stale.status_code == 412
    assert stale.headers["content-type"] == "application/problem+json"

    listed = await app_client.get("/v1/accounts", headers=tenant.headers)
    assert [a["id"] for a in listed.json()["data"]] == [acct["id"]]

    deleted = await app_client.delete(f"/v1/accounts/{acct['id']}", headers=tenant.headers)
    assert deleted.status_code == 204
    gone = await app_client.get(f"/v1/accounts/{acct['id']}", headers=tenant.headers)
    assert gone.status_code == 404


async def test_cross_tenant_account_is_404(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    resp = await app_client.post("/v1/accounts", json={"name": "Secret"}, headers=tenant.headers)
    acct_id = resp.json()["id"]
    for method, kwargs in (("GET", {}), ("PATCH", {"json": {"name": "pwned"}}), ("DELETE", {})):
        r = await app_client.request(
            method, f"/v1/accounts/{acct_id}", headers=other_tenant.headers, **kwargs
        )
        assert r.status_code == 404, (method, r.text)
    still = await app_client.get(f"/v1/accounts/{acct_id}", headers=tenant.headers)
    assert still.json()["name"] == "Secret"
