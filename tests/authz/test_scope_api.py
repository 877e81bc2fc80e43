"""Record scope over HTTP with user tokens (password grant): reads, lists, changes and
deletions of records outside the scope are 404; owners default to their creator and
can be reassigned to active users of the tenant only; Idempotency-Keys do not replay
across users."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from meridian.settings import Settings
from tests.fixtures.api import Tenant
from tests.fixtures.engines import *  # noqa: F403 - record scope runs on both shard engines
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


async def opportunity(client: httpx.AsyncClient, headers: Headers, account: str, **kw: Any) -> str:
    body = {"account_id": account, "name": "Deal", "currency": "EUR", **kw}
    resp = await client.post("/v1/opportunities", json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    record_id: str = resp.json()["id"]
    return record_id


async def listed(client: httpx.AsyncClient, headers: Headers, path: str) -> set[str]:
    found: set[str] = set()
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        resp = await client.get(path, params=params, headers=headers)
        assert resp.status_code == 200, resp.text
        found |= {r["id"] for r in resp.json()["data"]}
        cursor = resp.json()["next_cursor"]
        if cursor is None:
            return found


async def test_scope_over_http(
    app_client: httpx.AsyncClient, login: httpx.AsyncClient, tenant: Tenant
) -> None:
    boss, boss_headers = await member(app_client, login, tenant, role="sales_manager")
    lead, lead_headers = await member(
        app_client, login, tenant, role="sales_manager", manager_id=boss
    )
    rep, rep_headers = await member(app_client, login, tenant, manager_id=lead)
    peer, peer_headers = await member(app_client, login, tenant, manager_id=lead)
    account = (
        await app_client.post(
            "/v1/accounts", json={"name": "Acme", "owner_id": boss}, headers=tenant.headers
        )
    ).json()["id"]
    mine = await opportunity(app_client, rep_headers, account)  # owned by its creator
    theirs = await opportunity(app_client, peer_headers, account)
    got = await app_client.get(f"/v1/opportunities/{mine}", headers=rep_headers)
    assert got.json()["owner_id"] == rep
    got = await app_client.get(f"/v1/opportunities/{theirs}", headers=peer_headers)
    assert got.json()["owner_id"] == peer

    assert await listed(app_client, rep_headers, "/v1/opportunities") == {mine}
    assert await listed(app_client, lead_headers, "/v1/opportunities") == {mine, theirs}
    assert await listed(app_client, boss_headers, "/v1/opportunities") == {mine, theirs}
    # The rep cannot open the account (the boss's) either, though it exists.
    assert (await app_client.get(f"/v1/accounts/{account}", headers=rep_headers)).status_code == 404

    path = f"/v1/opportunities/{theirs}"
    assert (await app_client.get(path, headers=rep_headers)).status_code == 404
    changed = await app_client.patch(path, json={"name": "Mine now"}, headers=rep_headers)
    assert changed.status_code == 404
    stale = await app_client.patch(
        path, json={"name": "x"}, headers={**rep_headers, "If-Match": '"9"'}
    )
    assert stale.status_code == 404  # not 412: that would say the record exists
    assert (await app_client.delete(path, headers=rep_headers)).status_code == 404
    assert (await app_client.get(path, headers=tenant.headers)).json()["name"] == "Deal"

    # The lead hands the peer's deal to the rep: the peer loses it, the rep gains it.
    moved = await app_client.patch(path, json={"owner_id": rep}, headers=lead_headers)
    assert moved.status_code == 200, moved.text
    assert (await app_client.get(path, headers=peer_headers)).status_code == 404
    assert (await app_client.get(path, headers=rep_headers)).status_code == 200
    assert await listed(app_client, rep_headers, "/v1/opportunities") == {mine, theirs}
    deleted = await app_client.delete(f"/v1/opportunities/{mine}", headers=rep_headers)
    assert deleted.status_code == 204


async def test_owners_are_active_users_of_the_tenant(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    gone = (await new_user(app_client, tenant))["id"]
    resp = await app_client.patch(
        f"/v1/users/{gone}", json={"active": False}, headers=tenant.headers
    )
    assert resp.status_code == 200
    foreign = (await new_user(app_client, other_tenant))["id"]
    account = (
        await app_client.post("/v1/accounts", json={"name": "A"}, headers=tenant.headers)
    ).json()["id"]
    for owner in (gone, foreign, str(uuid.uuid4())):
        for method, path, body in (
            ("POST", "/v1/accounts", {"name": "B", "owner_id": owner}),
            ("PATCH", f"/v1/accounts/{account}", {"owner_id": owner}),
            ("POST", "/v1/contacts", {"last_name": "C", "owner_id": owner}),
            (
                "POST",
                "/v1/activities",
                {
                    "type": "call",
                    "subject": "s",
                    "occurred_at": "2026-01-01T00:00:00Z",
                    "account_id": account,
                    "owner_id": owner,
                },
            ),
        ):
            resp = await app_client.request(method, path, json=body, headers=tenant.headers)
            assert resp.status_code == 422, (method, path, resp.text)
            assert "owner_id" in resp.json()["detail"]


async def test_idempotency_keys_do_not_replay_across_users(
    app_client: httpx.AsyncClient, login: httpx.AsyncClient, tenant: Tenant
) -> None:
    _, one = await member(app_client, login, tenant)
    _, other = await member(app_client, login, tenant)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"last_name": "Same"}
    first = await app_client.post("/v1/contacts", json=body, headers={**one, **key})
    assert first.status_code == 201
    replay = await app_client.post("/v1/contacts", json=body, headers={**one, **key})
    assert replay.json() == first.json()
    stolen = await app_client.post("/v1/contacts", json=body, headers={**other, **key})
    assert stolen.status_code == 422, stolen.text
    assert first.json()["id"] not in stolen.text


async def test_activities_and_timelines_follow_the_scope(
    app_client: httpx.AsyncClient, login: httpx.AsyncClient, tenant: Tenant
) -> None:
    lead, lead_headers = await member(app_client, login, tenant, role="sales_manager")
    _rep, rep_headers = await member(app_client, login, tenant, manager_id=lead)
    peer, peer_headers = await member(app_client, login, tenant, manager_id=lead)
    contact = await app_client.post(
        "/v1/contacts", json={"last_name": "Peer's"}, headers=peer_headers
    )
    assert contact.status_code == 201, contact.text
    contact_id = contact.json()["id"]
    logged = await app_client.post(
        "/v1/activities",
        json={
            "type": "call",
            "subject": "hello",
            "occurred_at": "2026-11-01T10:00:00Z",
            "contact_id": contact_id,
        },
        headers=peer_headers,
    )
    assert logged.status_code == 201, logged.text
    activity = logged.json()
    assert activity["owner_id"] == peer  # the creator owns it
    # The rep sees neither the peer's activity nor the timeline of the peer's contact.
    assert (
        await app_client.get(f"/v1/activities/{activity['id']}", headers=rep_headers)
    ).status_code == 404
    timeline = f"/v1/contacts/{contact_id}/timeline"
    assert (await app_client.get(timeline, headers=rep_headers)).status_code == 404
    assert await listed(app_client, rep_headers, "/v1/activities") == set()
    # Their manager and the peer see both.
    for headers in (lead_headers, peer_headers):
        assert (
            await app_client.get(f"/v1/activities/{activity['id']}", headers=headers)
        ).status_code == 200
        assert await listed(app_client, headers, timeline) == {activity["id"]}
