"""GET /v1/audit: sign-ins and failed sign-ins, role, user and share changes and
deletions appear with their actor and time, filtered by type, actor and time; only
audit readers see it, only their own tenant's; sign-ins stay out of ordinary users'
/v1/events."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from meridian.events.audit import AUDITED_ACTIONS, AUDITED_KINDS, is_audited
from meridian.oauth.login import record_sign_in
from meridian.runtime import Runtime
from meridian.settings import Settings
from tenancy.context import TenantContext, TenantStatus
from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.response_models import checking
from tests.fixtures.users import PASSWORD, login_api, new_user, sign_in

Headers = dict[str, str]


@pytest.fixture(scope="module")
async def login(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with login_api(settings) as client:
        yield client


async def audit(client: httpx.AsyncClient, headers: Headers, **params: Any) -> list[Any]:
    """Every page of the audit, following next_cursor."""
    found: list[Any] = []
    cursor = None
    while True:
        query = {"limit": 50, **params, **({"cursor": cursor} if cursor else {})}
        resp = await client.get("/v1/audit", params=query, headers=headers)
        assert resp.status_code == 200, resp.text
        found += resp.json()["data"]
        cursor = resp.json()["next_cursor"]
        if cursor is None:
            return found


def of_type(events: list[Any], type_: str) -> list[Any]:
    return [e for e in events if e["type"] == type_]


async def password_login(
    login: httpx.AsyncClient, tenant: Tenant, email: str, password: str
) -> httpx.Response:
    form = {"grant_type": "password", "username": email, "password": password}
    return await login.post(
        "/oauth/token",
        data={**form, "tenant": tenant.slug},
        auth=(tenant.client_id, tenant.client_secret),
    )


def assert_stamped(event: dict[str, Any], actor: dict[str, Any], since: datetime) -> None:
    assert event["actor"] == actor, event
    occurred = datetime.fromisoformat(event["occurred_at"])
    assert since - timedelta(seconds=5) <= occurred <= datetime.now(UTC) + timedelta(seconds=5)


async def test_sign_ins_and_failed_sign_ins(
    app_client: httpx.AsyncClient, login: httpx.AsyncClient, tenant: Tenant
) -> None:
    started = datetime.now(UTC)
    email = f"grace-{uuid.uuid4().hex[:8]}@example.test"
    user = await new_user(app_client, tenant, password=PASSWORD, email=email)
    headers = await sign_in(login, tenant, email)
    wrong = "not the password at all"
    assert (await password_login(login, tenant, email, wrong)).status_code == 400
    stranger = f"nobody-{uuid.uuid4().hex[:8]}@example.test"
    assert (await password_login(login, tenant, stranger, wrong)).status_code == 400

    with checking(app_client):
        events = await audit(app_client, tenant.headers, type="auth.*", order="asc")
    signed_in = of_type(events, "auth.signed_in")
    failed = of_type(events, "auth.sign_in_failed")
    assert len(signed_in) == 1, events
    assert len(failed) == 2, events
    assert_stamped(signed_in[0], {"type": "user", "id": user["id"]}, started)
    assert signed_in[0]["record"] == {"kind": "auth", "id": user["id"], "owner_id": None}
    assert signed_in[0]["data"] == {"user_id": user["id"], "client_id": tenant.client_id}
    client_actor = {"type": "client", "id": tenant.client_id}
    for event in failed:
        assert_stamped(event, client_actor, started)
    assert [(e["data"]["user_id"], e["data"]["reason"]) for e in failed] == [
        (user["id"], "wrong_password"),
        (None, "unknown_user"),
    ]
    text = str(events)
    for secret in (email, stranger, PASSWORD, wrong):
        assert secret not in text

    # The user who signed in sees no sign-in in the events, theirs or anyone's.
    resp = await app_client.get("/v1/events", params={"limit": 200}, headers=headers)
    assert resp.status_code == 200, resp.text
    assert not [e for e in resp.json()["data"] if e["record"]["kind"] == "auth"]
    resp = await app_client.get("/v1/events", params={"type": "auth.*"}, headers=headers)
    assert resp.json()["data"] == []
    # Nor the audit.
    resp = await app_client.get("/v1/audit", headers=headers)
    assert_problem(resp, 403, "forbidden")
    assert resp.json()["object"] == "audit"


async def test_role_changes_with_permissions_before_and_after(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    started = datetime.now(UTC)
    h = tenant.headers
    read = {"object": "contacts", "action": "read"}
    write = {"object": "contacts", "action": "update"}
    resp = await app_client.post(
        "/v1/roles", json={"name": "auditee", "permissions": [read]}, headers=h
    )
    assert resp.status_code == 201, resp.text
    resp = await app_client.put(
        "/v1/roles/auditee/permissions", json={"permissions": [read, write]}, headers=h
    )
    assert resp.status_code == 200, resp.text
    # A change that changes nothing is no event.
    resp = await app_client.patch("/v1/roles/auditee", json={}, headers=h)
    assert resp.status_code == 200, resp.text
    resp = await app_client.put(
        "/v1/roles/sales_rep/permissions", json={"permissions": [read]}, headers=h
    )
    assert resp.status_code == 200, resp.text
    assert (await app_client.delete("/v1/roles/auditee", headers=h)).status_code == 204

    events = await audit(app_client, h, type="role.*", order="asc")
    assert [e["type"] for e in events] == [
        "role.created",
        "role.updated",
        "role.updated",
        "role.deleted",
    ]
    client_actor = {"type": "client", "id": tenant.client_id}
    for event in events:
        assert_stamped(event, client_actor, started)
    made, widened, overridden, dropped = (e["data"] for e in events)
    assert made["permissions"] == {"before": None, "after": [read]}
    assert made["record"]["name"] == "auditee"
    assert widened["permissions"] == {"before": [read], "after": [read, write]}
    assert widened["changes"]["permissions"] == {"old": [read], "new": [read, write]}
    assert overridden["record"]["name"] == "sales_rep"
    assert overridden["record"]["overridden"] is True
    assert overridden["permissions"]["after"] == [read]
    assert len(overridden["permissions"]["before"]) > 1
    assert dropped["permissions"] == {"before": [read, write], "after": None}


async def test_user_changes_shares_and_deletions(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    started = datetime.now(UTC)
    h = tenant.headers
    client_actor = {"type": "client", "id": tenant.client_id}
    user = await new_user(app_client, tenant)
    resp = await app_client.patch(
        f"/v1/users/{user['id']}", json={"role": "sales_manager"}, headers=h
    )
    assert resp.status_code == 200, resp.text
    resp = await app_client.patch(f"/v1/users/{user['id']}", json={"active": False}, headers=h)
    assert resp.status_code == 200, resp.text
    colleague = await new_user(app_client, tenant)
    contact = (
        await app_client.post(
            "/v1/contacts", json={"first_name": "Sam", "last_name": "Share"}, headers=h
        )
    ).json()
    path = f"/v1/contacts/{contact['id']}"
    assert (await app_client.patch(path, json={"last_name": "S"}, headers=h)).status_code == 200
    resp = await app_client.post(f"{path}/shares", json={"user_id": colleague["id"]}, headers=h)
    assert resp.status_code == 201, resp.text
    share = resp.json()
    resp = await app_client.delete(f"{path}/shares/{share['id']}", headers=h)
    assert resp.status_code == 204, resp.text
    assert (await app_client.delete(path, headers=h)).status_code == 204

    events = await audit(app_client, h, order="asc", since=started.isoformat())
    mine = [e for e in events if e["record"]["id"] in (user["id"], share["id"], contact["id"])]
    assert [e["type"] for e in mine] == [
        "user.created",
        "user.updated",
        "user.updated",
        "share.created",
        "share.deleted",
        "contact.deleted",
    ]
    for event in mine:
        assert_stamped(event, client_actor, started)
    _, promoted, deactivated, granted, revoked, deleted = (e["data"] for e in mine)
    assert promoted["changes"] == {"role": {"old": "sales_rep", "new": "sales_manager"}}
    assert deactivated["changes"] == {"active": {"old": True, "new": False}}
    for event in (granted, revoked):
        assert event["record"]["record_kind"] == "contact"
        assert event["record"]["record_id"] == contact["id"]
        assert event["record"]["user_id"] == colleague["id"]
    assert deleted["record"]["last_name"] == "S"
    # A record's other changes are its history, not the audit.
    assert not [e for e in events if e["type"] == "contact.updated"]


async def test_filters_by_type_actor_and_time(
    app_client: httpx.AsyncClient, login: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    boss = await new_user(app_client, tenant, role="admin", password=PASSWORD)
    boss_headers = await sign_in(login, tenant, boss["email"])
    before = datetime.now(UTC)
    for name in ("One", "Two", "Three"):
        contact = (
            await app_client.post(
                "/v1/contacts", json={"first_name": name, "last_name": "X"}, headers=boss_headers
            )
        ).json()
        resp = await app_client.delete(f"/v1/contacts/{contact['id']}", headers=boss_headers)
        assert resp.status_code == 204
    after = datetime.now(UTC)

    by_boss = await audit(app_client, h, actor_id=boss["id"])
    # The sign-in and three deletions, newest first.
    assert [e["type"] for e in by_boss] == [
        *["contact.deleted"] * 3,
        "auth.signed_in",
    ]
    assert [e["seq"] for e in by_boss] == sorted((e["seq"] for e in by_boss), reverse=True)
    deletions = await audit(app_client, h, type="contact.deleted")
    assert {e["seq"] for e in by_boss[:3]} <= {e["seq"] for e in deletions}
    assert {e["type"] for e in deletions} == {"contact.deleted"}
    window = await audit(
        app_client, h, since=before.isoformat(), until=after.isoformat(), actor_id=boss["id"]
    )
    assert window == by_boss[:3]
    assert await audit(app_client, h, until=before.isoformat(), actor_id=boss["id"]) == [by_boss[3]]
    # One by one, both ways: every event once.
    paged = await audit(app_client, h, actor_id=boss["id"], limit=1)
    assert paged == by_boss
    assert await audit(app_client, h, actor_id=boss["id"], limit=1, order="asc") == by_boss[::-1]
    # The boss is an admin: the audit is theirs to read too.
    assert await audit(app_client, boss_headers, actor_id=boss["id"]) == by_boss

    resp = await app_client.get("/v1/audit", params={"type": "contact.updated"}, headers=h)
    assert_problem(resp, 422, "validation")
    # An empty window is an empty page.
    assert await audit(app_client, h, since=after.isoformat(), until=before.isoformat()) == []
    resp = await app_client.get("/v1/audit", params={"cursor": "9" * 19}, headers=h)
    assert_problem(resp, 400, "invalid-cursor")
    resp = await app_client.get("/v1/audit", params={"since": "2026-01-01T00:00:00"}, headers=h)
    assert resp.status_code == 422  # a time without its zone


async def test_another_tenants_audit_shows_nothing_of_these(
    app_client: httpx.AsyncClient, login: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    user = await new_user(app_client, tenant, password=PASSWORD)
    await sign_in(login, tenant, user["email"])
    resp = await app_client.post(
        "/v1/roles", json={"name": "private_role", "permissions": []}, headers=tenant.headers
    )
    assert resp.status_code == 201, resp.text
    ours = await audit(app_client, tenant.headers)
    assert {"auth.signed_in", "role.created", "user.created"} <= {e["type"] for e in ours}
    theirs = await audit(app_client, other_tenant.headers)
    assert not {e["id"] for e in theirs} & {e["id"] for e in ours}
    assert user["id"] not in str(theirs)
    assert "private_role" not in str(theirs)


async def test_a_sign_in_is_answered_when_its_event_cannot_be_appended(
    app_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The shard refuses the tenant (not resident there): logged, not raised."""
    runtime: Runtime = app_client.app.state.runtime  # type: ignore[attr-defined]
    shard = sorted(runtime.engines.shards)[0]
    nowhere = TenantContext(
        tenant_id=uuid.uuid4(),
        slug="nowhere",
        shard_id=shard,
        region="us",
        status=TenantStatus.ACTIVE,
        epoch=1,
    )
    with caplog.at_level(logging.ERROR, logger="meridian.oauth.login"):
        await record_sign_in(
            runtime.router,
            nowhere,
            client_id="c",
            user_id=uuid.uuid4(),
            failure=None,
            on_stale=_none,
        )
    assert "auth.signed_in" in caplog.text
    assert "not recorded" in caplog.text


async def _none(_: TenantContext) -> None:
    return None


def test_the_audited_types_are_defined_once() -> None:
    assert {"auth", "role", "user", "share", "webhook"} <= set(AUDITED_KINDS)
    assert set(AUDITED_ACTIONS) == {"deleted", "exported", "merged", "unmerged"}
    for audited in (
        "auth.signed_in",
        "auth.sign_in_failed",
        "role.updated",
        "user.updated",
        "share.deleted",
        "webhook.created",
        "contact.deleted",
        "contact.exported",
        "stage.deleted",
        "contact.merged",
        "account.unmerged",
    ):
        assert is_audited(audited), audited
    for not_audited in ("contact.updated", "opportunity.won", "account.created"):
        assert not is_audited(not_audited), not_audited
