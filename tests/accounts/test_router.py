from __future__ import annotations

import httpx

from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem


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
    assert_problem(stale, 412, "precondition-failed")

    listed = await app_client.get("/v1/accounts", headers=tenant.headers)
    assert [a["id"] for a in listed.json()["data"]] == [acct["id"]]

    deleted = await app_client.delete(f"/v1/accounts/{acct['id']}", headers=tenant.headers)
    assert deleted.status_code == 204
    gone = await app_client.get(f"/v1/accounts/{acct['id']}", headers=tenant.headers)
    assert_problem(gone, 404, "not-found")


async def test_an_account_cannot_become_its_own_ancestor(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    async def account(**body: str) -> str:
        resp = await app_client.post("/v1/accounts", json=body, headers=tenant.headers)
        assert resp.status_code == 201, resp.text
        made: str = resp.json()["id"]
        return made

    top = await account(name="Top")
    mid = await account(name="Mid", parent_id=top)
    low = await account(name="Low", parent_id=mid)
    before = {
        a: (await app_client.get(f"/v1/accounts/{a}", headers=tenant.headers)).json()
        for a in (top, mid, low)
    }
    # Itself, its child, its grandchild: each would close a loop.
    for child, parent in ((top, top), (top, mid), (top, low), (mid, low)):
        resp = await app_client.patch(
            f"/v1/accounts/{child}", json={"parent_id": parent}, headers=tenant.headers
        )
        assert_problem(resp, 409, "conflict", "parent_id")
    for a, was in before.items():
        assert (await app_client.get(f"/v1/accounts/{a}", headers=tenant.headers)).json() == was
    # Moving a subtree elsewhere is fine.
    moved = await app_client.patch(
        f"/v1/accounts/{mid}", json={"parent_id": None}, headers=tenant.headers
    )
    assert moved.status_code == 200, moved.text


async def test_deleting_an_account_that_records_refer_to_is_409(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    acme = await app_client.post("/v1/accounts", json={"name": "Acme"}, headers=tenant.headers)
    url = f"/v1/accounts/{acme.json()['id']}"
    contact = await app_client.post(
        "/v1/contacts",
        json={"last_name": "Lovelace", "account_id": acme.json()["id"]},
        headers=tenant.headers,
    )
    assert contact.status_code == 201, contact.text

    refused = await app_client.delete(url, headers=tenant.headers)
    assert_problem(refused, 409, "conflict", "still referenced")
    assert (await app_client.get(url, headers=tenant.headers)).json() == acme.json()
    # Once nothing refers to it, it can go.
    unlinked = await app_client.delete(
        f"/v1/contacts/{contact.json()['id']}", headers=tenant.headers
    )
    assert unlinked.status_code == 204
    assert (await app_client.delete(url, headers=tenant.headers)).status_code == 204
