"""Finding a record's duplicates over a real shard: by email and phone through their
blind indexes, by similar names, under the default rules and the tenant's own; only the
records the caller may see, never another tenant's; and the rules' API."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.users import new_user, sign_in
from tests.merges.records import get, post

PASSWORD = "correct horse battery staple"


async def duplicates(
    client: httpx.AsyncClient, headers: dict[str, str], plural: str, record_id: str
) -> dict[str, Any]:
    return await get(client, headers, f"/v1/{plural}/{record_id}/duplicates")


def found(page: dict[str, Any]) -> dict[str, list[str]]:
    """Each duplicate's id and the names of the rules that matched it."""
    return {d["record"]["id"]: [r["name"] for r in d["rules"]] for d in page["data"]}


async def test_contacts_by_email_phone_and_similar_name(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    h = tenant.headers
    acme = await post(app_client, h, "/v1/accounts", name="Acme")
    other = await post(app_client, h, "/v1/accounts", name="Other")
    me = await post(
        app_client,
        h,
        "/v1/contacts",
        first_name="Jonathan",
        last_name="Smith",
        email="jon.smith@acme.example",
        phone="+44 (20) 7946-0958",
        account_id=acme["id"],
    )
    same_email = await post(
        app_client,
        h,
        "/v1/contacts?allow_duplicate=true",
        last_name="Smyth",
        email="  Jon.Smith@ACME.example ",
    )
    same_phone = await post(
        app_client, h, "/v1/contacts", last_name="Doe", phone="0044 20 7946 0958"
    )
    similar = await post(
        app_client,
        h,
        "/v1/contacts",
        first_name="Jonathon",
        last_name="Smith",
        account_id=acme["id"],
    )
    elsewhere = await post(
        app_client,
        h,
        "/v1/contacts",
        first_name="Jonathon",
        last_name="Smith",
        account_id=other["id"],
    )
    await post(app_client, h, "/v1/contacts", first_name="Mary", last_name="Smith")
    # Another tenant's identical contact is never a duplicate.
    await post(
        app_client,
        other_tenant.headers,
        "/v1/contacts",
        first_name="Jonathan",
        last_name="Smith",
        email="jon.smith@acme.example",
    )
    page = await duplicates(app_client, h, "contacts", me["id"])
    assert found(page) == {
        same_email["id"]: ["Same email"],
        same_phone["id"]: ["Same phone"],
        similar["id"]: ["Similar name at the same account"],
    }
    assert elsewhere["id"] not in found(page)
    assert [d["score"] for d in page["data"]][:2] == [1.0, 1.0]
    fuzzy = page["data"][-1]
    assert 0.5 <= fuzzy["score"] < 1.0
    assert fuzzy["record"]["first_name"] == "Jonathon"
    assert [r["name"] for r in page["rules"]] == [
        "Same email",
        "Same phone",
        "Similar name at the same account",
    ]
    assert all(r["id"] is None for r in page["rules"])
    limited = await get(app_client, h, f"/v1/contacts/{me['id']}/duplicates?limit=1")
    assert len(limited["data"]) == 1
    # Records come as a GET shows them: sealed fields in clear (the caller has pii:read).
    assert page["data"][0]["record"]["email"] == "jon.smith@acme.example"


async def test_accounts_and_leads_under_default_and_own_rules(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    me = await post(
        app_client, h, "/v1/accounts", name="Initrode Systems", domain="initrode.example"
    )
    same_domain = await post(
        app_client, h, "/v1/accounts", name="IT Holdings", domain="INITRODE.example"
    )
    similar = await post(app_client, h, "/v1/accounts", name="Initrode Systems Ltd.")
    taxed = await post(app_client, h, "/v1/accounts", name="Unrelated", tax_id="DE 811 907 980")
    await post(app_client, h, "/v1/accounts", name="Initech")
    assert found(await duplicates(app_client, h, "accounts", me["id"])) == {
        same_domain["id"]: ["Same domain"],
        similar["id"]: ["Similar name"],
    }
    # The tenant's own rule replaces the defaults for accounts.
    rule = await post(
        app_client,
        h,
        "/v1/duplicate-rules",
        kind="account",
        name="Same tax id",
        conditions=[{"type": "exact", "field": "tax_id"}],
    )
    patched = await app_client.patch(
        f"/v1/accounts/{me['id']}", json={"tax_id": "811907980"}, headers=h
    )
    assert patched.status_code == 200, patched.text
    page = await duplicates(app_client, h, "accounts", me["id"])
    assert found(page) == {taxed["id"]: ["Same tax id"]}
    assert page["rules"] == [{"id": rule["id"], "name": "Same tax id"}]
    # An inactive rule matches nothing, and the defaults do not come back.
    off = await app_client.patch(
        f"/v1/duplicate-rules/{rule['id']}", json={"active": False}, headers=h
    )
    assert off.status_code == 200, off.text
    assert (await duplicates(app_client, h, "accounts", me["id"]))["data"] == []

    lead = await post(
        app_client,
        h,
        "/v1/leads",
        first_name="Grace",
        last_name="Hopper",
        company="Cobol Systems",
        email="grace@cobol.example",
    )
    twin = await post(
        app_client, h, "/v1/leads", first_name="Grace", last_name="Hoper", company="COBOL Systems"
    )
    mailed = await post(app_client, h, "/v1/leads", last_name="X", email="GRACE@cobol.example")
    await post(app_client, h, "/v1/leads", first_name="Grace", last_name="Hopper", company="Navy")
    assert found(await duplicates(app_client, h, "leads", lead["id"])) == {
        mailed["id"]: ["Same email"],
        twin["id"]: ["Similar name and company"],
    }


async def test_only_records_in_scope_and_never_another_tenants(
    app_client: httpx.AsyncClient,
    user_api: httpx.AsyncClient,
    tenant: Tenant,
    intruder: Tenant,
) -> None:
    h = tenant.headers
    rep = await new_user(app_client, tenant, password=PASSWORD)
    rep_h = await sign_in(user_api, tenant, rep["email"])
    mine = await post(
        app_client, h, "/v1/leads", last_name="Lamarr", email="hedy@x.example", owner_id=rep["id"]
    )
    also_mine = await post(
        app_client, h, "/v1/leads", last_name="L", email="hedy@x.example", owner_id=rep["id"]
    )
    hidden = await post(app_client, h, "/v1/leads", last_name="M", email="hedy@x.example")
    assert set(found(await duplicates(app_client, h, "leads", mine["id"]))) == {
        also_mine["id"],
        hidden["id"],
    }
    assert set(found(await duplicates(app_client, rep_h, "leads", mine["id"]))) == {also_mine["id"]}
    resp = await app_client.get(f"/v1/leads/{hidden['id']}/duplicates", headers=rep_h)
    assert_problem(resp, 404, "not-found")
    for path in (f"/v1/leads/{mine['id']}/duplicates", f"/v1/leads/{uuid.uuid4()}/duplicates"):
        assert_problem(await app_client.get(path, headers=intruder.headers), 404, "not-found")


async def test_rules_api(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    rule = await post(
        app_client,
        h,
        "/v1/duplicate-rules",
        kind="contact",
        name="Same name and email",
        conditions=[
            {"type": "fuzzy", "field": "full_name", "threshold": 0.8},
            {"type": "exact", "field": "email"},
        ],
    )
    assert rule["conditions"][0] == {"type": "fuzzy", "field": "full_name", "threshold": 0.8}
    assert rule["active"] is True
    path = f"/v1/duplicate-rules/{rule['id']}"
    assert (await get(app_client, h, path))["name"] == "Same name and email"
    listed = await get(app_client, h, "/v1/duplicate-rules?kind=contact")
    assert [r["id"] for r in listed["data"]] == [rule["id"]]
    assert (await get(app_client, h, "/v1/duplicate-rules?kind=lead"))["data"] == []
    taken = await app_client.post(
        "/v1/duplicate-rules",
        json={
            "kind": "contact",
            "name": "Same name and email",
            "conditions": [{"type": "exact", "field": "phone"}],
        },
        headers=h,
    )
    assert_problem(taken, 409, "conflict")
    twice = await app_client.post(
        "/v1/duplicate-rules",
        json={
            "kind": "contact",
            "name": "Twice",
            "conditions": [{"type": "exact", "field": "phone"}] * 2,
        },
        headers=h,
    )
    assert assert_problem(twice, 422, "validation")["errors"][0]["type"] == "unique"
    wrong_kind = await app_client.post(
        "/v1/duplicate-rules",
        json={"kind": "account", "name": "x", "conditions": [{"type": "exact", "field": "email"}]},
        headers=h,
    )
    assert_problem(wrong_kind, 422, "validation")
    not_this_kind = await app_client.patch(
        path, json={"conditions": [{"type": "exact", "field": "domain"}]}, headers=h
    )
    assert_problem(not_this_kind, 409, "conflict", "this is a contact rule")
    changed = await app_client.patch(
        path, json={"name": "Renamed"}, headers={**h, "If-Match": '"1"'}
    )
    assert changed.status_code == 200, changed.text
    stale = await app_client.patch(path, json={"name": "Again"}, headers={**h, "If-Match": '"1"'})
    assert_problem(stale, 412, "precondition-failed")
    # Sales reps read the rules; only admins change them.
    rep = await new_user(app_client, tenant, password=PASSWORD)
    rep_h = await sign_in(user_api, tenant, rep["email"])
    assert (await get(app_client, rep_h, path))["name"] == "Renamed"
    assert_problem(await app_client.delete(path, headers=rep_h), 403, "forbidden")
    assert (await app_client.delete(path, headers=h)).status_code == 204
    assert_problem(await app_client.get(path, headers=h), 404, "not-found")
