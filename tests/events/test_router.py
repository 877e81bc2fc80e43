"""GET /v1/events: the tenant's log in order, resumable, filtered by type, and scoped:
a user sees the events of the records they may see, never another tenant's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from meridian.settings import Settings
from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.users import PASSWORD, login_api, new_user, sign_in

Headers = dict[str, str]


@pytest.fixture(scope="module")
async def login(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with login_api(settings) as client:
        yield client


async def all_events(client: httpx.AsyncClient, headers: Headers, **params: Any) -> list[Any]:
    """Every page, following next_cursor."""
    found: list[Any] = []
    after = params.pop("after", None)
    while True:
        query = {**params, "limit": 3, **({"after": after} if after is not None else {})}
        resp = await client.get("/v1/events", params=query, headers=headers)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        found += body["data"]
        if body["next_cursor"] is None:
            assert body["last_seq"] == (found[-1]["seq"] if found else int(after or 0))
            return found
        after = body["next_cursor"]


async def test_pages_follow_the_sequence_and_resume(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    account = (
        await app_client.post("/v1/accounts", json={"name": "Acme"}, headers=tenant.headers)
    ).json()
    etag = None
    for name in ("Acme 2", "Acme 3", "Acme 4"):
        resp = await app_client.patch(
            f"/v1/accounts/{account['id']}",
            json={"name": name},
            headers={**tenant.headers, **({"If-Match": etag} if etag else {})},
        )
        assert resp.status_code == 200, resp.text
        etag = resp.headers["etag"]
    events = await all_events(app_client, tenant.headers)
    mine = [e for e in events if e["record"]["id"] == account["id"]]
    # Per-record order is the log's order.
    assert [e["type"] for e in mine] == ["account.created", *["account.updated"] * 3]
    assert [e["data"]["changes"]["name"]["new"] for e in mine[1:]] == [
        "Acme 2",
        "Acme 3",
        "Acme 4",
    ]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    later = await all_events(app_client, tenant.headers, after=str(seqs[1]))
    assert [e["seq"] for e in later] == seqs[2:]


async def test_type_filter(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    await app_client.post("/v1/accounts", json={"name": "Acme"}, headers=tenant.headers)
    await app_client.post("/v1/contacts", json={"last_name": "Ng"}, headers=tenant.headers)
    only = await all_events(app_client, tenant.headers, type="contact.*")
    assert only
    assert {e["record"]["kind"] for e in only} == {"contact"}
    exact = await all_events(app_client, tenant.headers, type="account.created")
    assert exact
    assert {e["type"] for e in exact} == {"account.created"}
    both = await all_events(app_client, tenant.headers, type="account.created,contact.*")
    assert {e["type"] for e in both} == {"account.created", "contact.created"}


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"type": "contact"}, 422),
        ({"type": "nothing.created"}, 422),
        ({"type": "Contact.*"}, 422),
        ({"after": "-1"}, 422),
        ({"after": "abc"}, 422),
        ({"limit": "0"}, 422),
    ],
)
async def test_bad_queries_are_422(
    app_client: httpx.AsyncClient, tenant: Tenant, params: dict[str, str], status: int
) -> None:
    await app_client.post("/v1/accounts", json={"name": "Acme"}, headers=tenant.headers)
    resp = await app_client.get("/v1/events", params=params, headers=tenant.headers)
    assert_problem(resp, status, "validation")


async def test_events_never_cross_tenants(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    mine = (
        await app_client.post("/v1/accounts", json={"name": "Mine"}, headers=tenant.headers)
    ).json()
    theirs = await all_events(app_client, other_tenant.headers)
    assert mine["id"] not in {e["record"]["id"] for e in theirs}
    assert all("Mine" not in str(e) for e in theirs)


async def test_a_scoped_user_sees_only_events_of_records_in_scope(
    app_client: httpx.AsyncClient, login: httpx.AsyncClient, tenant: Tenant
) -> None:
    boss = await new_user(app_client, tenant, role="sales_manager", password=PASSWORD)
    rep = await new_user(app_client, tenant, manager_id=boss["id"], password=PASSWORD)
    peer = await new_user(app_client, tenant, password=PASSWORD)
    rep_headers = await sign_in(login, tenant, rep["email"])
    boss_headers = await sign_in(login, tenant, boss["email"])
    mine = (
        await app_client.post(
            "/v1/accounts", json={"name": "Rep's", "owner_id": rep["id"]}, headers=tenant.headers
        )
    ).json()
    theirs = (
        await app_client.post(
            "/v1/accounts", json={"name": "Peer's", "owner_id": peer["id"]}, headers=tenant.headers
        )
    ).json()
    deleted = (
        await app_client.post(
            "/v1/accounts", json={"name": "Gone", "owner_id": rep["id"]}, headers=tenant.headers
        )
    ).json()
    resp = await app_client.delete(f"/v1/accounts/{deleted['id']}", headers=tenant.headers)
    assert resp.status_code == 204
    seen = {e["record"]["id"] for e in await all_events(app_client, rep_headers)}
    assert mine["id"] in seen
    assert deleted["id"] in seen
    assert theirs["id"] not in seen
    # The manager sees the report's records, not the stranger's.
    seen = {e["record"]["id"] for e in await all_events(app_client, boss_headers)}
    assert mine["id"] in seen
    assert theirs["id"] not in seen
    # Sharing the record opens its events too.
    resp = await app_client.post(
        f"/v1/accounts/{theirs['id']}/shares", json={"user_id": rep["id"]}, headers=tenant.headers
    )
    assert resp.status_code == 201, resp.text
    seen = {e["record"]["id"] for e in await all_events(app_client, rep_headers)}
    assert theirs["id"] in seen


async def test_a_role_without_events_read_is_403(
    app_client: httpx.AsyncClient, login: httpx.AsyncClient, tenant: Tenant
) -> None:
    resp = await app_client.post(
        "/v1/roles",
        json={"name": "no_events", "permissions": [{"object": "accounts", "action": "read"}]},
        headers=tenant.headers,
    )
    assert resp.status_code == 201, resp.text
    user = await new_user(app_client, tenant, role="no_events", password=PASSWORD)
    headers = await sign_in(login, tenant, user["email"])
    resp = await app_client.get("/v1/events", headers=headers)
    assert_problem(resp, 403, "forbidden")


async def test_without_a_token_is_401(app_client: httpx.AsyncClient) -> None:
    assert_problem(await app_client.get("/v1/events"), 401, "unauthorized")


async def test_an_after_beyond_the_log_is_an_empty_page(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await app_client.post("/v1/accounts", json={"name": "Acme"}, headers=tenant.headers)
    resp = await app_client.get("/v1/events", params={"after": "999999"}, headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"data": [], "next_cursor": None, "last_seq": 999999}
