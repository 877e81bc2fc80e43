"""The contact API over a real shard: CRUD, validation, listing, idempotency, isolation."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.users import new_user_id


async def new_account(client: httpx.AsyncClient, tenant: Tenant, name: str = "Acme") -> str:
    resp = await client.post("/v1/accounts", json={"name": name}, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    account_id: str = resp.json()["id"]
    return account_id


async def new_contact(client: httpx.AsyncClient, tenant: Tenant, **body: Any) -> dict[str, Any]:
    body.setdefault("last_name", "Lovelace")
    resp = await client.post("/v1/contacts", json=body, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    contact: dict[str, Any] = resp.json()
    return contact


async def list_ids(client: httpx.AsyncClient, tenant: Tenant, **params: Any) -> list[str]:
    resp = await client.get("/v1/contacts", params=params, headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    return [c["id"] for c in resp.json()["data"]]


async def test_contact_crud(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    account_id = await new_account(app_client, tenant)
    owner_id = await new_user_id(app_client, tenant)
    resp = await app_client.post(
        "/v1/contacts",
        json={
            "first_name": " Ada ",
            "last_name": "Lovelace",
            "email": "  Ada.Lovelace@Example.COM ",
            "phone": "+44 (20) 7946-0958",
            "title": "Analyst",
            "account_id": account_id,
            "owner_id": owner_id,
        },
        headers=tenant.headers,
    )
    assert resp.status_code == 201, resp.text
    contact = resp.json()
    assert contact["first_name"] == "Ada"
    assert contact["email"] == "ada.lovelace@example.com"
    assert contact["phone"] == "+44 (20) 7946-0958"
    assert contact["account_id"] == account_id
    assert contact["owner_id"] == owner_id
    assert contact["version"] == 1
    assert "tenant_id" not in contact
    assert resp.headers["etag"] == '"1"'
    assert resp.headers["location"] == f"/v1/contacts/{contact['id']}"

    got = await app_client.get(f"/v1/contacts/{contact['id']}", headers=tenant.headers)
    assert got.status_code == 200
    assert got.json() == contact
    assert got.headers["etag"] == '"1"'
    cached = await app_client.get(
        f"/v1/contacts/{contact['id']}", headers={**tenant.headers, "If-None-Match": '"1"'}
    )
    assert cached.status_code == 304

    upd = await app_client.patch(
        f"/v1/contacts/{contact['id']}",
        json={"title": "Chief Analyst", "email": None, "account_id": None},
        headers={**tenant.headers, "If-Match": '"1"'},
    )
    assert upd.status_code == 200, upd.text
    changed = upd.json()
    assert changed["title"] == "Chief Analyst"
    assert changed["email"] is None
    assert changed["account_id"] is None
    assert changed["last_name"] == "Lovelace"  # untouched fields stay
    assert changed["version"] == 2
    assert upd.headers["etag"] == '"2"'

    assert await list_ids(app_client, tenant) == [contact["id"]]

    deleted = await app_client.delete(
        f"/v1/contacts/{contact['id']}", headers={**tenant.headers, "If-Match": '"2"'}
    )
    assert deleted.status_code == 204
    gone = await app_client.get(f"/v1/contacts/{contact['id']}", headers=tenant.headers)
    assert_problem(gone, 404, "not-found")
    again = await app_client.delete(f"/v1/contacts/{contact['id']}", headers=tenant.headers)
    assert_problem(again, 404, "not-found")


async def test_create_with_only_a_last_name(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    contact = await new_contact(app_client, tenant, last_name="Hopper")
    assert contact["first_name"] is None  # absent, not ""
    for field in ("email", "phone", "title", "account_id", "owner_id"):
        assert contact[field] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "last_name"),
        ({"last_name": ""}, "last_name"),
        ({"last_name": "   "}, "last_name"),
        ({"last_name": "x" * 101}, "last_name"),
        ({"last_name": 42}, "last_name"),
        ({"last_name": "L", "first_name": "x" * 101}, "first_name"),
        ({"last_name": "L", "first_name": ["Ada"]}, "first_name"),
        ({"last_name": "L", "title": "x" * 201}, "title"),
        ({"last_name": "L", "account_id": "not-a-uuid"}, "account_id"),
        ({"last_name": "L", "owner_id": 7}, "owner_id"),
        ({"last_name": "L", "email": "not-an-email"}, "email"),
        ({"last_name": "L", "email": "ada@"}, "email"),
        ({"last_name": "L", "email": "@example.com"}, "email"),
        ({"last_name": "L", "email": "ada@example"}, "email"),
        ({"last_name": "L", "email": "ada lovelace@example.com"}, "email"),
        ({"last_name": "L", "email": "ada..l@example.com"}, "email"),
        ({"last_name": "L", "email": "ada@exa_mple.com"}, "email"),
        ({"last_name": "L", "email": "ada@-example.com"}, "email"),
        ({"last_name": "L", "email": 12}, "email"),
        ({"last_name": "L", "phone": "call me"}, "phone"),
        ({"last_name": "L", "phone": "12"}, "phone"),
        ({"last_name": "L", "phone": "1+555"}, "phone"),
        ({"last_name": "L", "phone": "+1 555 0100 ext. 4"}, "phone"),
        ({"last_name": "L", "phone": "1" * 16}, "phone"),
        ({"last_name": "L", "phone": "1 " * 20 + "1"}, "phone"),
        ({"last_name": "L", "nickname": "Ada"}, "nickname"),
        ({"last_name": "L", "tenant_id": str(uuid.uuid4())}, "tenant_id"),
        ({"last_name": "L", "id": str(uuid.uuid4())}, "id"),
    ],
)
async def test_create_rejects_invalid_input(
    app_client: httpx.AsyncClient, tenant: Tenant, body: dict[str, Any], field: str
) -> None:
    resp = await app_client.post("/v1/contacts", json=body, headers=tenant.headers)
    assert_problem(resp, 422, "validation")
    problem = resp.json()
    assert problem["type"] == "urn:meridian:problem:validation"
    assert problem["errors"][0]["loc"] == [field]
    assert await list_ids(app_client, tenant) == []


async def test_create_rejects_a_body_that_is_not_an_object(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    resp = await app_client.post("/v1/contacts", json=["Lovelace"], headers=tenant.headers)
    assert_problem(resp, 422, "validation")
    broken = await app_client.post(
        "/v1/contacts",
        content=b"{not json",
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert_problem(broken, 400, "bad-request")


@pytest.mark.parametrize(
    ("email", "stored"),
    [
        ("ADA@EXAMPLE.COM", "ada@example.com"),
        ("first.last+crm@mail.example.co.uk", "first.last+crm@mail.example.co.uk"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("user@xn--80ak6aa92e.xn--p1ai", "user@xn--80ak6aa92e.xn--p1ai"),
    ],
)
async def test_valid_emails_are_normalised(
    app_client: httpx.AsyncClient, tenant: Tenant, email: str, stored: str
) -> None:
    contact = await new_contact(app_client, tenant, email=email)
    assert contact["email"] == stored


async def test_unknown_account_is_422_naming_the_field(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    missing = str(uuid.uuid4())
    resp = await app_client.post(
        "/v1/contacts", json={"last_name": "L", "account_id": missing}, headers=tenant.headers
    )
    assert_problem(resp, 422, "validation", f"account_id: no account {missing}")
    assert await list_ids(app_client, tenant) == []

    contact = await new_contact(app_client, tenant)
    upd = await app_client.patch(
        f"/v1/contacts/{contact['id']}", json={"account_id": missing}, headers=tenant.headers
    )
    assert_problem(upd, 422, "validation", f"account_id: no account {missing}")
    got = await app_client.get(f"/v1/contacts/{contact['id']}", headers=tenant.headers)
    assert got.json() == contact


async def test_patch_refuses_null_on_required_fields(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    contact = await new_contact(app_client, tenant, first_name="Ada")
    for field in ("last_name",):  # first_name is optional: null clears it
        resp = await app_client.patch(
            f"/v1/contacts/{contact['id']}", json={field: None}, headers=tenant.headers
        )
        assert_problem(resp, 422, "validation", f"{field}: cannot be null")
    for body in ({"bogus": 1}, {"email": "nope"}, {"last_name": ""}, {"phone": "x"}):
        resp = await app_client.patch(
            f"/v1/contacts/{contact['id']}", json=body, headers=tenant.headers
        )
        assert_problem(resp, 422, "validation")
    got = await app_client.get(f"/v1/contacts/{contact['id']}", headers=tenant.headers)
    assert got.json() == contact


async def test_patch_and_delete_of_unknown_ids_are_404(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    missing = uuid.uuid4()
    account_id = await new_account(app_client, tenant)
    cases: list[tuple[str, dict[str, Any] | None]] = [
        ("GET", None),
        ("PATCH", {"title": "x"}),
        ("PATCH", {"account_id": account_id}),
        ("DELETE", None),
    ]
    for method, body in cases:
        resp = await app_client.request(
            method, f"/v1/contacts/{missing}", json=body, headers=tenant.headers
        )
        assert_problem(resp, 404, "not-found", str(missing))
    bad = await app_client.get("/v1/contacts/not-a-uuid", headers=tenant.headers)
    assert_problem(bad, 422, "validation")


async def test_filters(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    acme = await new_account(app_client, tenant, "Acme")
    globex = await new_account(app_client, tenant, "Globex")
    owner = await new_user_id(app_client, tenant)
    a = await new_contact(
        app_client, tenant, last_name="Smith", email="a.smith@acme.test", account_id=acme
    )
    b = await new_contact(app_client, tenant, last_name="Smith", account_id=globex, owner_id=owner)
    c = await new_contact(
        app_client,
        tenant,
        last_name="Jones",
        email="c.jones@acme.test",
        account_id=acme,
        owner_id=owner,
    )
    assert await list_ids(app_client, tenant, account_id=acme) == [a["id"], c["id"]]
    assert await list_ids(app_client, tenant, account_id=globex) == [b["id"]]
    assert await list_ids(app_client, tenant, email=" A.Smith@ACME.test ") == [a["id"]]
    assert await list_ids(app_client, tenant, email="smith@acme.test") == []
    assert await list_ids(app_client, tenant, last_name="Smith") == [a["id"], b["id"]]
    assert await list_ids(app_client, tenant, last_name="smith") == []
    assert await list_ids(app_client, tenant, owner_id=owner) == [b["id"], c["id"]]
    assert await list_ids(app_client, tenant, owner_id=owner, account_id=acme) == [c["id"]]
    assert await list_ids(app_client, tenant, account_id=str(uuid.uuid4())) == []

    bad = await app_client.get(
        "/v1/contacts", params={"account_id": "nope"}, headers=tenant.headers
    )
    assert_problem(bad, 422, "validation")


async def test_sorting(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    names = ["Turing", "Hopper", "Lovelace", "Hopper"]
    created = [await new_contact(app_client, tenant, last_name=n) for n in names]
    ids = [c["id"] for c in created]

    assert await list_ids(app_client, tenant) == ids  # default: created_at
    assert await list_ids(app_client, tenant, sort="-created_at") == ids[::-1]
    by_name = sorted(created, key=lambda c: (c["last_name"], c["id"]))
    assert await list_ids(app_client, tenant, sort="last_name") == [c["id"] for c in by_name]
    assert await list_ids(app_client, tenant, sort="-last_name") == [
        c["id"] for c in reversed(by_name)
    ]

    touched = await app_client.patch(
        f"/v1/contacts/{ids[0]}", json={"title": "Dr"}, headers=tenant.headers
    )
    assert touched.status_code == 200
    assert (await list_ids(app_client, tenant, sort="-updated_at"))[0] == ids[0]
    assert (await list_ids(app_client, tenant, sort="updated_at"))[-1] == ids[0]

    for bad in ("email", "-phone", "tenant_id"):
        resp = await app_client.get("/v1/contacts", params={"sort": bad}, headers=tenant.headers)
        assert_problem(resp, 400, "bad-request", "Cannot sort by")


async def test_pagination_visits_every_row_once(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    account_id = await new_account(app_client, tenant)
    # Repeated last names make the id tie-breaker do real work across page edges.
    created = [
        await new_contact(app_client, tenant, last_name=f"Name{i % 3}", account_id=account_id)
        for i in range(8)
    ]
    await new_contact(app_client, tenant, last_name="Elsewhere")  # filtered out
    expected = [c["id"] for c in sorted(created, key=lambda c: (c["last_name"], c["id"]))]

    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3, "sort": "last_name", "account_id": account_id}
    pages = 0
    while True:
        resp = await app_client.get("/v1/contacts", params=params, headers=tenant.headers)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        pages += 1
        assert len(page["data"]) <= 3
        seen += [c["id"] for c in page["data"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == expected
    assert pages == 3

    first = await app_client.get(
        "/v1/contacts", params={"limit": 3, "sort": "last_name"}, headers=tenant.headers
    )
    cursor = first.json()["next_cursor"]
    for other in ({"sort": "-last_name"}, {"sort": "last_name", "last_name": "Name1"}):
        resp = await app_client.get(
            "/v1/contacts", params={"limit": 3, "cursor": cursor, **other}, headers=tenant.headers
        )
        assert_problem(resp, 400, "invalid-cursor")
    garbage = await app_client.get("/v1/contacts", params={"cursor": "!!!"}, headers=tenant.headers)
    assert_problem(garbage, 400, "invalid-cursor")
    for limit in (0, 201, "ten"):
        resp = await app_client.get("/v1/contacts", params={"limit": limit}, headers=tenant.headers)
        assert_problem(resp, 422, "validation")


async def test_idempotent_create(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    key = f"k-{uuid.uuid4()}"
    headers = {**tenant.headers, "Idempotency-Key": key}
    body = {"last_name": "Lovelace", "email": "ada@example.com"}
    first = await app_client.post("/v1/contacts", json=body, headers=headers)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers

    replay = await app_client.post("/v1/contacts", json=body, headers=headers)
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert replay.headers["location"] == first.headers["location"]
    assert replay.headers["etag"] == first.headers["etag"]
    assert await list_ids(app_client, tenant) == [first.json()["id"]]

    different = await app_client.post(
        "/v1/contacts", json={**body, "last_name": "Byron"}, headers=headers
    )
    assert_problem(different, 422, "idempotency-key-reused")
    assert different.json()["type"] == "urn:meridian:problem:idempotency-key-reused"
    assert await list_ids(app_client, tenant) == [first.json()["id"]]

    # A request that failed validation stores nothing: the key stays usable.
    fresh = {**tenant.headers, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    bad = await app_client.post(
        "/v1/contacts", json={"last_name": "L", "account_id": str(uuid.uuid4())}, headers=fresh
    )
    assert_problem(bad, 422, "validation")
    good = await app_client.post("/v1/contacts", json={"last_name": "Later"}, headers=fresh)
    assert good.status_code == 201
    assert "idempotent-replayed" not in good.headers


async def test_if_match_conflicts_are_412(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    contact = await new_contact(app_client, tenant)
    url = f"/v1/contacts/{contact['id']}"
    moved = await app_client.patch(url, json={"title": "CTO"}, headers=tenant.headers)
    assert moved.json()["version"] == 2

    account_id = await new_account(app_client, tenant)
    for body in ({"title": "CEO"}, {"account_id": account_id}):
        stale = await app_client.patch(
            url, json=body, headers={**tenant.headers, "If-Match": '"1"'}
        )
        assert_problem(stale, 412, "precondition-failed")
    stale_delete = await app_client.delete(url, headers={**tenant.headers, "If-Match": '"1"'})
    assert_problem(stale_delete, 412, "precondition-failed")
    weak = await app_client.patch(
        url, json={"title": "CEO"}, headers={**tenant.headers, "If-Match": 'W/"2"'}
    )
    assert_problem(weak, 422, "validation")  # not the declared If-Match format

    got = await app_client.get(url, headers=tenant.headers)
    assert got.json() == moved.json()

    anything = await app_client.patch(
        url, json={"title": "CEO"}, headers={**tenant.headers, "If-Match": "*"}
    )
    assert anything.status_code == 200
    current = await app_client.delete(url, headers={**tenant.headers, "If-Match": '"3"'})
    assert current.status_code == 204


async def test_another_tenants_contacts_cannot_be_linked_listed_or_replayed(
    app_client: httpx.AsyncClient, tenant: Tenant, intruder: Tenant
) -> None:
    """What the route matrix (tests/test_cross_tenant.py) does not cover: references in
    bodies, list filters and idempotency keys across tenants."""
    account_id = await new_account(app_client, tenant)
    contact = await new_contact(app_client, tenant, email="secret@acme.test", account_id=account_id)
    url = f"/v1/contacts/{contact['id']}"

    # POST and PATCH cannot link the intruder's contacts to the owner's account.
    linked = await app_client.post(
        "/v1/contacts",
        json={"last_name": "Spy", "account_id": account_id},
        headers=intruder.headers,
    )
    assert_problem(linked, 422, "validation", f"account_id: no account {account_id}")
    own = await new_contact(app_client, intruder, last_name="Spy")
    relinked = await app_client.patch(
        f"/v1/contacts/{own['id']}", json={"account_id": account_id}, headers=intruder.headers
    )
    assert_problem(relinked, 422, "validation", f"account_id: no account {account_id}")

    # LIST: the owner's rows are invisible, whatever the filter.
    assert await list_ids(app_client, intruder) == [own["id"]]
    assert await list_ids(app_client, intruder, account_id=account_id) == []
    assert await list_ids(app_client, intruder, email="secret@acme.test") == []

    # An Idempotency-Key is per tenant: the same key replays nothing across tenants.
    key = {"Idempotency-Key": f"shared-{uuid.uuid4()}"}
    mine = await app_client.post(
        "/v1/contacts", json={"last_name": "Same"}, headers={**tenant.headers, **key}
    )
    theirs = await app_client.post(
        "/v1/contacts", json={"last_name": "Same"}, headers={**intruder.headers, **key}
    )
    assert mine.status_code == theirs.status_code == 201
    assert "idempotent-replayed" not in theirs.headers
    assert mine.json()["id"] != theirs.json()["id"]

    # Nothing of the owner's changed.
    still = await app_client.get(url, headers=tenant.headers)
    assert still.json() == contact
    assert await list_ids(app_client, tenant) == [contact["id"], mine.json()["id"]]


async def test_requires_a_token_with_the_right_scope(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    assert_problem(await app_client.get("/v1/contacts"), 401, "unauthorized")
    assert_problem(
        await app_client.post("/v1/contacts", json={"last_name": "L"}), 401, "unauthorized"
    )
