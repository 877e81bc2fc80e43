from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.activities.rows import create_account, create_contact, create_opportunity
from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.users import new_user_id

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def at(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


async def post_activity(client: httpx.AsyncClient, tenant: Tenant, **fields: Any) -> dict[str, Any]:
    body = {"type": "call", "subject": "Call", "occurred_at": at(0), **fields}
    resp = await client.post("/v1/activities", json=body, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def walk(
    client: httpx.AsyncClient, tenant: Tenant, url: str, **params: Any
) -> list[dict[str, Any]]:
    """Every row of a paginated listing, following next_cursor."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        resp = await client.get(url, params=query, headers=tenant.headers)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        rows += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows


async def test_activity_create_and_read(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    account_id = await create_account(app_client, tenant)
    owner = await new_user_id(app_client, tenant)
    resp = await app_client.post(
        "/v1/activities",
        json={
            "type": "meeting",
            "subject": " Kick-off ",
            "body": "Agenda: scope",
            "occurred_at": "2025-03-01T10:30:00+02:00",
            "account_id": account_id,
            "owner_id": owner,
        },
        headers=tenant.headers,
    )
    assert resp.status_code == 201, resp.text
    act = resp.json()
    assert resp.headers["etag"] == '"1"'
    assert resp.headers["location"].endswith(f"/v1/activities/{act['id']}")
    assert act["subject"] == "Kick-off"
    assert act["type"] == "meeting"
    assert act["account_id"] == account_id
    assert act["contact_id"] is None
    assert act["opportunity_id"] is None
    assert act["owner_id"] == owner
    assert datetime.fromisoformat(act["occurred_at"]) == datetime(2025, 3, 1, 8, 30, tzinfo=UTC)
    assert "version" not in act
    assert "updated_at" not in act

    got = await app_client.get(f"/v1/activities/{act['id']}", headers=tenant.headers)
    assert got.status_code == 200
    assert got.json() == act
    assert got.headers["etag"] == '"1"'
    cached = await app_client.get(
        f"/v1/activities/{act['id']}", headers={**tenant.headers, "If-None-Match": '"1"'}
    )
    assert cached.status_code == 304

    # Immutable: no update or delete routes.
    for method, payload in (("PATCH", {"subject": "x"}), ("DELETE", None), ("PUT", None)):
        r = await app_client.request(
            method, f"/v1/activities/{act['id']}", headers=tenant.headers, json=payload
        )
        assert_problem(r, 405, "method-not-allowed")
    assert (await app_client.get(f"/v1/activities/{act['id']}", headers=tenant.headers)).json() == (
        act
    )

    missing = await app_client.get(f"/v1/activities/{uuid.uuid4()}", headers=tenant.headers)
    assert_problem(missing, 404, "not-found")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"account_id": None}, "body"),  # no link at all
        ({"occurred_at": "2025-03-01T10:30:00"}, "occurred_at"),  # naive
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"occurred_at": None}, "occurred_at"),
        ({"type": "fax"}, "type"),
        ({"subject": ""}, "subject"),
        ({"subject": "x" * 256}, "subject"),
        ({"color": "red"}, "color"),
        ({"version": 1}, "version"),
        ({"contact_id": "not-a-uuid"}, "contact_id"),
    ],
)
async def test_activity_validation(
    app_client: httpx.AsyncClient, tenant: Tenant, change: dict[str, Any], field: str
) -> None:
    account_id = await create_account(app_client, tenant)
    body = {"type": "note", "subject": "S", "occurred_at": at(0), "account_id": account_id}
    resp = await app_client.post("/v1/activities", json={**body, **change}, headers=tenant.headers)
    problem = assert_problem(resp, 422, "validation")
    assert problem["errors"][0]["loc"][0] == field
    listed = await app_client.get("/v1/activities", headers=tenant.headers)
    assert listed.json()["data"] == []


async def test_links_must_exist(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    account_id = await create_account(app_client, tenant)
    for field in ("contact_id", "account_id", "opportunity_id"):
        body = {"type": "task", "subject": "S", "occurred_at": at(0), "account_id": account_id}
        body[field] = str(uuid.uuid4())
        resp = await app_client.post("/v1/activities", json=body, headers=tenant.headers)
        assert resp.status_code == 422, resp.text
        problem = resp.json()
        assert problem["detail"].startswith(f"{field}:")
        assert problem["errors"][0]["loc"] == [field]
    assert (await app_client.get("/v1/activities", headers=tenant.headers)).json()["data"] == []


async def test_account_is_filled_from_contact_or_opportunity(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    acme = await create_account(app_client, tenant, "Acme")
    globex = await create_account(app_client, tenant, "Globex")
    contact = await create_contact(app_client, tenant, account_id=acme)
    loner = await create_contact(app_client, tenant, last_name="Loner")
    deal = await create_opportunity(app_client, tenant, account_id=globex)

    from_contact = await post_activity(app_client, tenant, contact_id=contact)
    assert from_contact["account_id"] == acme
    from_deal = await post_activity(app_client, tenant, opportunity_id=deal)
    assert from_deal["account_id"] == globex
    # Both: the opportunity's account wins.
    both = await post_activity(app_client, tenant, contact_id=contact, opportunity_id=deal)
    assert both["account_id"] == globex
    # An explicit account is kept as given.
    explicit = await post_activity(app_client, tenant, contact_id=contact, account_id=globex)
    assert explicit["account_id"] == globex
    # A contact without an account leaves it empty.
    alone = await post_activity(app_client, tenant, contact_id=loner)
    assert alone["account_id"] is None
    assert alone["contact_id"] == loner


async def test_list_filters_and_sorting(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    acme = await create_account(app_client, tenant, "Acme")
    contact = await create_contact(app_client, tenant, account_id=acme)
    owner = await new_user_id(app_client, tenant)
    a = await post_activity(app_client, tenant, type="call", occurred_at=at(10), account_id=acme)
    b = await post_activity(
        app_client, tenant, type="email", occurred_at=at(30), contact_id=contact
    )
    c = await post_activity(
        app_client, tenant, type="call", occurred_at=at(20), contact_id=contact, owner_id=owner
    )

    async def ids(**params: Any) -> list[str]:
        return [r["id"] for r in await walk(app_client, tenant, "/v1/activities", **params)]

    assert await ids() == [b["id"], c["id"], a["id"]]  # default -occurred_at
    assert await ids(sort="occurred_at") == [a["id"], c["id"], b["id"]]
    assert await ids(sort="created_at") == [a["id"], b["id"], c["id"]]
    assert await ids(sort="-created_at", limit=1) == [c["id"], b["id"], a["id"]]
    assert await ids(type="call") == [c["id"], a["id"]]
    assert await ids(contact_id=contact) == [b["id"], c["id"]]
    assert await ids(account_id=acme) == [b["id"], c["id"], a["id"]]
    assert await ids(owner_id=owner) == [c["id"]]
    assert await ids(opportunity_id=str(uuid.uuid4())) == []
    assert await ids(occurred_after=at(20)) == [b["id"], c["id"]]  # inclusive
    assert await ids(occurred_before=at(20)) == [a["id"]]  # exclusive
    assert await ids(occurred_after=at(15), occurred_before=at(25), type="call") == [c["id"]]
    assert await ids(limit=1, type="call") == [c["id"], a["id"]]

    for params in (
        {"occurred_after": "2025-03-01T09:00:00"},  # naive
        {"occurred_before": "soon"},
        {"type": "fax"},
        {"contact_id": "nope"},
    ):
        r = await app_client.get("/v1/activities", params=params, headers=tenant.headers)
        assert r.status_code == 422, (params, r.text)
    bad_sort = await app_client.get("/v1/activities?sort=subject", headers=tenant.headers)
    assert bad_sort.status_code == 400
    first = await app_client.get("/v1/activities?limit=1", headers=tenant.headers)
    replay = await app_client.get(
        "/v1/activities",
        params={"limit": 1, "type": "call", "cursor": first.json()["next_cursor"]},
        headers=tenant.headers,
    )
    assert replay.status_code == 400  # a cursor belongs to its filters


async def test_idempotent_post(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    account_id = await create_account(app_client, tenant)
    body = {"type": "note", "subject": "Once", "occurred_at": at(0), "account_id": account_id}
    headers = {**tenant.headers, "Idempotency-Key": f"a-{uuid.uuid4()}"}
    first = await app_client.post("/v1/activities", json=body, headers=headers)
    second = await app_client.post("/v1/activities", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["etag"] == '"1"'
    assert second.headers["location"] == first.headers["location"]
    listed = await app_client.get("/v1/activities", headers=tenant.headers)
    assert [a["id"] for a in listed.json()["data"]] == [first.json()["id"]]
    reused = await app_client.post(
        "/v1/activities", json={**body, "subject": "Twice"}, headers=headers
    )
    assert reused.status_code == 422
    assert reused.json()["type"].endswith("idempotency-key-reused")


async def test_timelines(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    acme = await create_account(app_client, tenant, "Acme")
    other = await create_account(app_client, tenant, "Other")
    contact = await create_contact(app_client, tenant, account_id=acme)
    deal = await create_opportunity(app_client, tenant, account_id=acme)

    direct = await post_activity(app_client, tenant, occurred_at=at(5), account_id=acme)
    via_contact = await post_activity(app_client, tenant, occurred_at=at(30), contact_id=contact)
    via_deal = await post_activity(app_client, tenant, occurred_at=at(20), opportunity_id=deal)
    # Two at the same instant: ties are broken by id, descending.
    tie_a = await post_activity(app_client, tenant, occurred_at=at(10), contact_id=contact)
    tie_b = await post_activity(app_client, tenant, occurred_at=at(10), contact_id=contact)
    tie_first, tie_second = sorted([tie_a["id"], tie_b["id"]], reverse=True)
    elsewhere = await post_activity(app_client, tenant, occurred_at=at(40), account_id=other)

    async def timeline(url: str, **params: Any) -> list[str]:
        return [r["id"] for r in await walk(app_client, tenant, url, **params)]

    account_url = f"/v1/accounts/{acme}/timeline"
    expected = [via_contact["id"], via_deal["id"], tie_first, tie_second, direct["id"]]
    assert await timeline(account_url) == expected
    for limit in (1, 2, 3):
        assert await timeline(account_url, limit=limit) == expected
    assert await timeline(f"/v1/contacts/{contact}/timeline") == [
        via_contact["id"],
        tie_first,
        tie_second,
    ]
    assert await timeline(f"/v1/opportunities/{deal}/timeline", limit=1) == [via_deal["id"]]
    assert await timeline(f"/v1/accounts/{other}/timeline") == [elsewhere["id"]]

    page = await app_client.get(account_url, params={"limit": 2}, headers=tenant.headers)
    body = page.json()
    assert [a["id"] for a in body["data"]] == expected[:2]
    assert body["data"][0] == via_contact  # full activity representations
    # A cursor works only on the timeline it came from.
    foreign = await app_client.get(
        f"/v1/accounts/{other}/timeline",
        params={"cursor": body["next_cursor"], "limit": 2},
        headers=tenant.headers,
    )
    assert_problem(foreign, 400, "invalid-cursor")
    garbage = await app_client.get(account_url, params={"cursor": "xyz"}, headers=tenant.headers)
    assert_problem(garbage, 400, "invalid-cursor")

    for kind in ("contacts", "accounts", "opportunities"):
        r = await app_client.get(f"/v1/{kind}/{uuid.uuid4()}/timeline", headers=tenant.headers)
        assert_problem(r, 404, "not-found")
        r = await app_client.get(f"/v1/{kind}/{acme}/timeline?limit=0", headers=tenant.headers)
        assert_problem(r, 422, "validation")
    empty = await create_contact(app_client, tenant, last_name="Quiet")
    r = await app_client.get(f"/v1/contacts/{empty}/timeline", headers=tenant.headers)
    assert r.json() == {"data": [], "next_cursor": None}


async def test_another_tenants_activities_cannot_be_linked_or_listed(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    """By-id routes across tenants are tests/test_cross_tenant.py's; these are the list
    filters and the links in request bodies."""
    acme = await create_account(app_client, tenant, "Acme")
    contact = await create_contact(app_client, tenant, account_id=acme)
    deal = await create_opportunity(app_client, tenant, account_id=acme)
    act = await post_activity(
        app_client, tenant, contact_id=contact, opportunity_id=deal, subject="Secret"
    )
    before = await walk(app_client, tenant, f"/v1/accounts/{acme}/timeline")

    # Lists filtered by the first tenant's ids are empty.
    for params in ({"contact_id": contact}, {"account_id": acme}, {"opportunity_id": deal}, {}):
        r = await app_client.get("/v1/activities", params=params, headers=other_tenant.headers)
        assert r.json() == {"data": [], "next_cursor": None}, params

    # Linking to the first tenant's records: 422 naming the field; nothing is written.
    own_account = await create_account(app_client, other_tenant, "Own")
    for field, value in (("contact_id", contact), ("account_id", acme), ("opportunity_id", deal)):
        body = {"type": "call", "subject": "pwned", "occurred_at": at(0), field: value}
        if field != "account_id":
            body["account_id"] = own_account
        r = await app_client.post("/v1/activities", json=body, headers=other_tenant.headers)
        assert_problem(r, 422, "validation")
        assert r.json()["errors"][0]["loc"] == [field], field
    r = await app_client.get("/v1/activities", headers=other_tenant.headers)
    assert r.json()["data"] == []

    assert await walk(app_client, tenant, f"/v1/accounts/{acme}/timeline") == before
    got = await app_client.get(f"/v1/activities/{act['id']}", headers=tenant.headers)
    assert got.json() == act
