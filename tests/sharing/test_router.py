"""Record shares over the API, with user tokens from the password grant: grants and
revocations apply at once (on every instance), teams, who may share, validation and
isolation between tenants."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.shard_db import superuser
from tests.fixtures.users import PASSWORD, new_user, sign_in

if TYPE_CHECKING:
    # Not at run time: pytest would try to collect the Test* class.
    from tests.fixtures.databases import TestDatabases

Headers = dict[str, str]


async def user(
    client: httpx.AsyncClient, login: httpx.AsyncClient, tenant: Tenant, **kw: Any
) -> tuple[str, Headers]:
    made = await new_user(client, tenant, password=PASSWORD, **kw)
    return made["id"], await sign_in(login, tenant, made["email"])


async def record(
    client: httpx.AsyncClient, headers: Headers, plural: str = "contacts", **body: Any
) -> str:
    defaults = {"contacts": {"last_name": "S"}, "accounts": {"name": "S"}}
    resp = await client.post(f"/v1/{plural}", json={**defaults[plural], **body}, headers=headers)
    assert resp.status_code == 201, resp.text
    record_id: str = resp.json()["id"]
    return record_id


async def can_open(client: httpx.AsyncClient, headers: Headers, path: str) -> bool:
    resp = await client.get(path, headers=headers)
    assert resp.status_code in (200, 404), resp.text
    return resp.status_code == 200


async def in_list(client: httpx.AsyncClient, headers: Headers, plural: str, rid: str) -> bool:
    resp = await client.get(f"/v1/{plural}", params={"limit": 200}, headers=headers)
    assert resp.status_code == 200, resp.text
    return rid in {r["id"] for r in resp.json()["data"]}


async def test_a_share_grants_and_its_revocation_takes_away_at_once(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    owner, owner_headers = await user(app_client, user_api, tenant)
    peer, peer_headers = await user(app_client, user_api, tenant)
    contact = await record(app_client, owner_headers)  # owned by its creator
    path = f"/v1/contacts/{contact}"
    # The admin's read fills the shared caches of both instances: nothing may leak.
    for client in (app_client, user_api):
        assert await can_open(client, tenant.headers, path)
        assert await can_open(client, owner_headers, path)
        assert not await can_open(client, peer_headers, path)

    granted = await app_client.post(f"{path}/shares", json={"user_id": peer}, headers=owner_headers)
    assert granted.status_code == 201, granted.text
    share = granted.json()
    assert share["user_id"] == peer
    assert share["team_id"] is None
    assert share["record_kind"] == "contact"
    assert share["record_id"] == contact
    assert share["created_by"] == owner
    assert granted.headers["location"] == f"{path}/shares/{share['id']}"
    for client in (app_client, user_api):
        assert await can_open(client, peer_headers, path)
        assert await in_list(client, peer_headers, "contacts", contact)

    listed = await app_client.get(f"{path}/shares", headers=peer_headers)
    assert listed.status_code == 200
    assert [s["id"] for s in listed.json()["data"]] == [share["id"]]

    revoked = await app_client.delete(f"{path}/shares/{share['id']}", headers=owner_headers)
    assert revoked.status_code == 204, revoked.text
    for client in (app_client, user_api):
        assert not await can_open(client, peer_headers, path)
        assert not await in_list(client, peer_headers, "contacts", contact)
    again = await app_client.delete(f"{path}/shares/{share['id']}", headers=owner_headers)
    assert_problem(again, 404, "not-found")


async def test_a_team_share_reaches_the_manager_and_everyone_below(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    boss, boss_headers = await user(app_client, user_api, tenant, role="sales_manager")
    lead, lead_headers = await user(
        app_client, user_api, tenant, role="sales_manager", manager_id=boss
    )
    rep, rep_headers = await user(app_client, user_api, tenant, manager_id=lead)
    other, other_headers = await user(app_client, user_api, tenant, manager_id=boss)
    _outsider, outsider_headers = await user(app_client, user_api, tenant)
    account = await record(app_client, outsider_headers, "accounts")
    path = f"/v1/accounts/{account}"
    resp = await app_client.post(f"{path}/shares", json={"team_id": lead}, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    assert resp.json()["created_by"] is None  # granted by the tenant's client
    assert await can_open(app_client, lead_headers, path)
    assert await can_open(app_client, rep_headers, path)
    # Above the team and beside it: no.
    assert not await can_open(app_client, boss_headers, path)
    assert not await can_open(app_client, other_headers, path)
    # Joining the team later is enough, leaving it ends it.
    move = await app_client.patch(
        f"/v1/users/{other}", json={"manager_id": rep}, headers=tenant.headers
    )
    assert move.status_code == 200
    assert await can_open(app_client, other_headers, path)
    move = await app_client.patch(
        f"/v1/users/{rep}", json={"manager_id": boss}, headers=tenant.headers
    )
    assert move.status_code == 200
    assert not await can_open(app_client, rep_headers, path)
    assert not await can_open(app_client, other_headers, path)


async def test_only_who_sees_the_record_and_may_update_it_shares(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    _owner, owner_headers = await user(app_client, user_api, tenant)
    peer, peer_headers = await user(app_client, user_api, tenant)
    _, reader_headers = await user(app_client, user_api, tenant, role="read_only")
    agent, agent_headers = await user(app_client, user_api, tenant, role="support_agent")
    contact = await record(app_client, owner_headers)
    path = f"/v1/contacts/{contact}/shares"
    # A record the peer cannot see does not exist for them.
    assert_problem(
        await app_client.post(path, json={"user_id": peer}, headers=peer_headers), 404, "not-found"
    )
    assert_problem(await app_client.get(path, headers=peer_headers), 404, "not-found")
    # Roles without the right to share are refused whatever they see.
    for headers in (reader_headers, agent_headers):
        assert_problem(
            await app_client.post(path, json={"user_id": peer}, headers=headers), 403, "forbidden"
        )
    made = await app_client.post(path, json={"user_id": agent}, headers=owner_headers)
    assert made.status_code == 201
    assert_problem(
        await app_client.delete(f"{path}/{made.json()['id']}", headers=agent_headers),
        403,
        "forbidden",
    )
    # The peer cannot revoke a share of a record they do not see.
    assert_problem(
        await app_client.delete(f"{path}/{made.json()['id']}", headers=peer_headers),
        404,
        "not-found",
    )


async def test_grantees_are_active_users_of_the_tenant(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    contact = await record(app_client, tenant.headers)
    path = f"/v1/contacts/{contact}/shares"
    gone = (await new_user(app_client, tenant))["id"]
    resp = await app_client.patch(
        f"/v1/users/{gone}", json={"active": False}, headers=tenant.headers
    )
    assert resp.status_code == 200
    foreign = (await new_user(app_client, other_tenant))["id"]
    for grantee in (gone, foreign, str(uuid.uuid4())):
        for field in ("user_id", "team_id"):
            resp = await app_client.post(path, json={field: grantee}, headers=tenant.headers)
            assert_problem(resp, 422, "validation", field)


@pytest.mark.parametrize(
    "body",
    [{}, {"user_id": None}, {"user_id": "x"}, {"other": 1}, "both"],
)
async def test_exactly_one_grantee(
    app_client: httpx.AsyncClient, tenant: Tenant, body: dict[str, Any] | str
) -> None:
    contact = await record(app_client, tenant.headers)
    if body == "both":
        one = (await new_user(app_client, tenant))["id"]
        body = {"user_id": one, "team_id": one}
    resp = await app_client.post(
        f"/v1/contacts/{contact}/shares", json=body, headers=tenant.headers
    )
    assert_problem(resp, 422, "validation")


async def test_duplicates_and_idempotent_retries(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    grantee = (await new_user(app_client, tenant))["id"]
    opportunity_account = await record(app_client, tenant.headers, "accounts")
    resp = await app_client.post(
        "/v1/opportunities",
        json={"account_id": opportunity_account, "name": "Deal", "currency": "EUR"},
        headers=tenant.headers,
    )
    assert resp.status_code == 201
    path = f"/v1/opportunities/{resp.json()['id']}/shares"
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = await app_client.post(
        path, json={"user_id": grantee}, headers={**tenant.headers, **key}
    )
    assert first.status_code == 201, first.text
    assert first.headers["location"] == f"{path}/{first.json()['id']}"
    assert "etag" not in first.headers  # a share is never changed: it has no ETag
    assert "idempotent-replayed" not in first.headers
    replay = await app_client.post(
        path, json={"user_id": grantee}, headers={**tenant.headers, **key}
    )
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert replay.headers["location"] == first.headers["location"]
    assert "etag" not in replay.headers
    reused = await app_client.post(
        path, json={"team_id": grantee}, headers={**tenant.headers, **key}
    )
    assert_problem(reused, 422, "idempotency-key-reused")
    assert_problem(
        await app_client.post(path, json={"user_id": grantee}, headers=tenant.headers),
        409,
        "conflict",
    )
    # The same user as a team is another share.
    team = await app_client.post(path, json={"team_id": grantee}, headers=tenant.headers)
    assert team.status_code == 201


async def test_deleting_a_record_deletes_its_shares(
    app_client: httpx.AsyncClient, tenant: Tenant, databases: TestDatabases
) -> None:
    grantee = (await new_user(app_client, tenant))["id"]
    contact = await record(app_client, tenant.headers)
    resp = await app_client.post(
        f"/v1/contacts/{contact}/shares", json={"user_id": grantee}, headers=tenant.headers
    )
    assert resp.status_code == 201
    gone = await app_client.delete(f"/v1/contacts/{contact}", headers=tenant.headers)
    assert gone.status_code == 204
    async with superuser(databases, tenant.shard_id) as conn:
        left = await conn.fetchval(
            "SELECT count(*) FROM record_share WHERE tenant_id = $1 AND record_id = $2",
            uuid.UUID(tenant.id),
            uuid.UUID(contact),
        )
    assert left == 0


async def test_a_record_cannot_be_shared_with_another_tenants_user(
    app_client: httpx.AsyncClient, tenant: Tenant, intruder: Tenant
) -> None:
    """The share routes of another tenant's records are tests/test_cross_tenant.py's."""
    grantee = (await new_user(app_client, tenant))["id"]
    contact = await record(app_client, tenant.headers)
    path = f"/v1/contacts/{contact}/shares"
    made = await app_client.post(path, json={"user_id": grantee}, headers=tenant.headers)
    assert made.status_code == 201
    # Another tenant's record cannot be shared with this tenant's user.
    theirs = await record(app_client, intruder.headers)
    resp = await app_client.post(
        f"/v1/contacts/{theirs}/shares", json={"user_id": grantee}, headers=intruder.headers
    )
    assert_problem(resp, 422, "validation", "user_id")
    listed = await app_client.get(path, headers=tenant.headers)
    assert [s["id"] for s in listed.json()["data"]] == [made.json()["id"]]
