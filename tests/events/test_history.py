"""GET /v1/{kind}/{id}/history: a record's field changes from the event log, newest or
oldest first, in pages by seq, filtered by field; encrypted values never shown; the
record scope of a read by id (a deleted record: the scope it had when deleted);
another tenant's record is 404, a role that cannot read the kind 403."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from meridian.settings import Settings
from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.response_models import checking
from tests.fixtures.users import PASSWORD, login_api, new_user, sign_in

Headers = dict[str, str]


@pytest.fixture(scope="module")
async def login(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with login_api(settings) as client:
        yield client


async def member(
    client: httpx.AsyncClient, login: httpx.AsyncClient, tenant: Tenant, **kw: Any
) -> tuple[str, Headers]:
    made = await new_user(client, tenant, password=PASSWORD, **kw)
    return made["id"], await sign_in(login, tenant, made["email"])


async def created(client: httpx.AsyncClient, path: str, body: Any, headers: Headers) -> Any:
    resp = await client.post(path, json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def patched(client: httpx.AsyncClient, path: str, body: Any, headers: Headers) -> Any:
    resp = await client.patch(path, json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def history(
    client: httpx.AsyncClient, path: str, headers: Headers, **params: Any
) -> list[dict[str, Any]]:
    resp = await client.get(f"{path}/history", params=params, headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["next_cursor"] is None
    data: list[dict[str, Any]] = resp.json()["data"]
    return data


async def every_page(
    client: httpx.AsyncClient, path: str, headers: Headers, **params: Any
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        resp = await client.get(f"{path}/history", params=query, headers=headers)
        assert resp.status_code == 200, resp.text
        found += resp.json()["data"]
        cursor = resp.json()["next_cursor"]
        if cursor is None:
            return found


async def test_a_contacts_history_through_create_updates_and_delete(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    with checking(app_client):
        contact = await created(
            app_client,
            "/v1/contacts",
            {"first_name": "Ada", "last_name": "Byron", "email": "ada@example.com"},
            h,
        )
        path = f"/v1/contacts/{contact['id']}"
        await patched(app_client, path, {"last_name": "Lovelace"}, h)
        await patched(app_client, path, {"email": "augusta@example.com"}, h)
        assert (await app_client.delete(path, headers=h)).status_code == 204

        resp = await app_client.get(f"{path}/history", headers=h)
        assert resp.status_code == 200, resp.text
        assert resp.json()["record"] == {"kind": "contact", "id": contact["id"]}
        newest_first = resp.json()["data"]
        oldest_first = await history(app_client, path, h, order="asc")

    assert [e["action"] for e in newest_first] == ["deleted", "updated", "updated", "created"]
    assert [e["type"] for e in oldest_first] == [
        "contact.created",
        "contact.updated",
        "contact.updated",
        "contact.deleted",
    ]
    assert oldest_first == newest_first[::-1]
    seqs = [e["seq"] for e in oldest_first]
    assert seqs == sorted(seqs)
    creation, renamed, re_addressed, deletion = oldest_first
    assert {"field": "first_name", "from": None, "to": "Ada"} in creation["changes"]
    assert {"field": "last_name", "from": None, "to": "Byron"} in creation["changes"]
    assert renamed["changes"] == [{"field": "last_name", "from": "Byron", "to": "Lovelace"}]
    assert re_addressed["changes"] == [{"field": "email", "changed": True}]
    assert deletion["changes"] == []
    for e in oldest_first:
        assert e["actor"] == {"type": "client", "id": tenant.client_id}
        assert e["occurred_at"]
    # Encrypted values appear nowhere, before or after.
    assert "ada@example.com" not in resp.text
    assert "augusta@example.com" not in resp.text


async def test_pages_by_seq_both_ways_and_the_field_filter(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    account = await created(app_client, "/v1/accounts", {"name": "Acme 0"}, h)
    path = f"/v1/accounts/{account['id']}"
    for i in range(1, 5):
        await patched(app_client, path, {"name": f"Acme {i}"}, h)
    await patched(app_client, path, {"domain": "acme.example"}, h)

    every = await history(app_client, path, h, order="asc")
    assert len(every) == 6
    down = await every_page(app_client, path, h, limit=2)
    up = await every_page(app_client, path, h, limit=2, order="asc")
    assert up == every
    assert down == every[::-1]
    # The first page of two says where the next one starts.
    resp = await app_client.get(f"{path}/history", params={"limit": 2}, headers=h)
    assert resp.json()["next_cursor"] == str(resp.json()["data"][-1]["seq"])

    names = await history(app_client, path, h, field="name", order="asc")
    assert [e["action"] for e in names] == ["created", *["updated"] * 4]
    assert [c["to"] for e in names for c in e["changes"]] == [f"Acme {i}" for i in range(5)]
    assert all(len(e["changes"]) == 1 for e in names)
    domains = await history(app_client, path, h, field="domain")
    assert [(e["action"], e["changes"]) for e in domains] == [
        ("updated", [{"field": "domain", "from": None, "to": "acme.example"}])
    ]

    resp = await app_client.get(f"{path}/history", params={"field": "colour"}, headers=h)
    assert_problem(resp, 422, "validation")
    assert "name" in resp.json()["detail"]
    resp = await app_client.get(f"{path}/history", params={"cursor": "x"}, headers=h)
    assert_problem(resp, 422, "validation")
    resp = await app_client.get(f"{path}/history", params={"cursor": "9" * 19}, headers=h)
    assert_problem(resp, 400, "invalid-cursor")


async def test_every_kind_has_a_history(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    h = tenant.headers
    with checking(app_client):
        account = await created(app_client, "/v1/accounts", {"name": "Globex"}, h)
        contact = await created(
            app_client, "/v1/contacts", {"first_name": "Hank", "last_name": "Scorpio"}, h
        )
        deal = await created(
            app_client,
            "/v1/opportunities",
            {"account_id": account["id"], "name": "Doomsday device", "currency": "USD"},
            h,
        )
        await patched(app_client, f"/v1/opportunities/{deal['id']}", {"name": "Hammock"}, h)
        call = await created(
            app_client,
            "/v1/activities",
            {
                "type": "call",
                "subject": "Kick-off",
                "occurred_at": "2026-01-05T10:00:00Z",
                "contact_id": contact["id"],
            },
            h,
        )
        deals = await history(app_client, f"/v1/opportunities/{deal['id']}", h)
        calls = await history(app_client, f"/v1/activities/{call['id']}", h)
        accounts = await history(app_client, f"/v1/accounts/{account['id']}", h)
    # Derived events (stage changes, won, lost) are not field changes.
    assert [e["type"] for e in deals] == ["opportunity.updated", "opportunity.created"]
    assert deals[0]["changes"] == [{"field": "name", "from": "Doomsday device", "to": "Hammock"}]
    assert [e["type"] for e in calls] == ["activity.created"]
    assert {"field": "subject", "from": None, "to": "Kick-off"} in calls[0]["changes"]
    assert [e["type"] for e in accounts] == ["account.created"]


async def test_a_sales_rep_sees_the_history_of_records_in_their_scope(
    app_client: httpx.AsyncClient, login: httpx.AsyncClient, tenant: Tenant
) -> None:
    lead, lead_headers = await member(app_client, login, tenant, role="sales_manager")
    rep, rep_headers = await member(app_client, login, tenant, manager_id=lead)
    _, peer_headers = await member(app_client, login, tenant, manager_id=lead)
    mine = await created(
        app_client, "/v1/contacts", {"first_name": "Mine", "last_name": "A"}, rep_headers
    )
    theirs = await created(
        app_client, "/v1/contacts", {"first_name": "Theirs", "last_name": "B"}, peer_headers
    )
    await patched(app_client, f"/v1/contacts/{mine['id']}", {"last_name": "AA"}, rep_headers)

    own = await history(app_client, f"/v1/contacts/{mine['id']}", rep_headers)
    assert [e["action"] for e in own] == ["updated", "created"]
    assert own[0]["actor"] == {"type": "user", "id": rep}
    resp = await app_client.get(f"/v1/contacts/{theirs['id']}/history", headers=rep_headers)
    assert_problem(resp, 404, "not-found")
    # Their manager sees both.
    assert await history(app_client, f"/v1/contacts/{theirs['id']}", lead_headers)

    # Deleted: still visible to those who saw it when it was deleted, to nobody else.
    for record, headers in ((mine, rep_headers), (theirs, peer_headers)):
        resp = await app_client.delete(f"/v1/contacts/{record['id']}", headers=headers)
        assert resp.status_code == 204, resp.text
    gone = await history(app_client, f"/v1/contacts/{mine['id']}", rep_headers)
    assert [e["action"] for e in gone] == ["deleted", "updated", "created"]
    resp = await app_client.get(f"/v1/contacts/{theirs['id']}/history", headers=rep_headers)
    assert_problem(resp, 404, "not-found")
    assert len(await history(app_client, f"/v1/contacts/{theirs['id']}", lead_headers)) == 2


async def test_another_tenants_record_and_an_unknown_id_are_404(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    contact = await created(
        app_client, "/v1/contacts", {"first_name": "Eve", "last_name": "X"}, tenant.headers
    )
    resp = await app_client.get(
        f"/v1/contacts/{contact['id']}/history", headers=other_tenant.headers
    )
    assert_problem(resp, 404, "not-found")
    # The same id as another kind is not that kind's record either.
    resp = await app_client.get(f"/v1/accounts/{contact['id']}/history", headers=tenant.headers)
    assert_problem(resp, 404, "not-found")
    resp = await app_client.delete(f"/v1/contacts/{contact['id']}", headers=tenant.headers)
    assert resp.status_code == 204
    resp = await app_client.get(
        f"/v1/contacts/{contact['id']}/history", headers=other_tenant.headers
    )
    assert_problem(resp, 404, "not-found")


async def test_a_role_that_cannot_read_the_kind_gets_403(
    app_client: httpx.AsyncClient, login: httpx.AsyncClient, tenant: Tenant
) -> None:
    resp = await app_client.post(
        "/v1/roles",
        json={"name": "account_reader", "permissions": [{"object": "accounts", "action": "read"}]},
        headers=tenant.headers,
    )
    assert resp.status_code == 201, resp.text
    _, headers = await member(app_client, login, tenant, role="account_reader")
    contact = await created(
        app_client, "/v1/contacts", {"first_name": "Zed", "last_name": "Y"}, tenant.headers
    )
    resp = await app_client.get(f"/v1/contacts/{contact['id']}/history", headers=headers)
    assert_problem(resp, 403, "forbidden")
    assert resp.json()["object"] == "contacts"
