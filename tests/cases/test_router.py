"""The case API over a real shard: CRUD, service levels, resolution, timeline and
history, the support agent's role, record scope and isolation."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx

from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.users import new_user, sign_in

PASSWORD = "correct horse battery staple"
Headers = dict[str, str]


async def post(
    client: httpx.AsyncClient, headers: Headers, path: str, **body: Any
) -> dict[str, Any]:
    resp = await client.post(path, json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    made: dict[str, Any] = resp.json()
    return made


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_case_lifecycle(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    account = await post(app_client, tenant.headers, "/v1/accounts", name="Initech")
    contact = await post(
        app_client, tenant.headers, "/v1/contacts", last_name="Gibbons", account_id=account["id"]
    )
    case = await post(
        app_client,
        tenant.headers,
        "/v1/cases",
        subject="TPS reports bounce",
        priority="urgent",
        origin="email",
        contact_id=contact["id"],
    )
    # The contact's account, and the urgent service level.
    assert case["account_id"] == account["id"]
    assert case["status"] == "new"
    assert at(case["due_at"]) - at(case["created_at"]) == timedelta(hours=4)
    assert case["resolved_at"] is None
    path = f"/v1/cases/{case['id']}"
    # Resolving needs a resolution.
    assert_problem(
        await app_client.patch(path, json={"status": "resolved"}, headers=tenant.headers),
        422,
        "validation",
    )
    resolved = await app_client.patch(
        path,
        json={"status": "resolved", "resolution": "Cover sheet added."},
        headers={**tenant.headers, "If-Match": '"1"'},
    )
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["resolved_at"] is not None
    assert resolved.json()["closed_at"] is None
    closed = await app_client.patch(path, json={"status": "closed"}, headers=tenant.headers)
    assert closed.json()["closed_at"] is not None
    assert closed.json()["resolved_at"] == resolved.json()["resolved_at"]
    # A stale ETag is refused.
    assert_problem(
        await app_client.patch(
            path, json={"priority": "low"}, headers={**tenant.headers, "If-Match": '"1"'}
        ),
        412,
        "precondition-failed",
    )
    reopened = await app_client.patch(path, json={"status": "open"}, headers=tenant.headers)
    assert reopened.json()["resolved_at"] is None
    assert reopened.json()["closed_at"] is None
    # Its own timeline, and its history.
    await post(
        app_client,
        tenant.headers,
        "/v1/activities",
        type="call",
        subject="Called back",
        occurred_at="2026-11-02T09:00:00Z",
        case_id=case["id"],
    )
    timeline = await app_client.get(f"{path}/timeline", headers=tenant.headers)
    assert [a["subject"] for a in timeline.json()["data"]] == ["Called back"]
    # The activity went to the case's account timeline too.
    account_line = await app_client.get(
        f"/v1/accounts/{account['id']}/timeline", headers=tenant.headers
    )
    assert [a["subject"] for a in account_line.json()["data"]] == ["Called back"]
    history = await app_client.get(
        f"{path}/history", params={"field": "status"}, headers=tenant.headers
    )
    assert [e["changes"][0]["to"] for e in history.json()["data"]][:3] == [
        "open",
        "closed",
        "resolved",
    ]
    # A contact with cases cannot be deleted (it would lose the service record).
    assert_problem(
        await app_client.delete(f"/v1/contacts/{contact['id']}", headers=tenant.headers),
        409,
        "conflict",
    )
    assert (await app_client.delete(path, headers=tenant.headers)).status_code == 204
    assert (await app_client.get(f"{path}/timeline", headers=tenant.headers)).status_code == 404


async def test_lists_filter_and_sort(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    late = await post(
        app_client,
        tenant.headers,
        "/v1/cases",
        subject="Late",
        priority="high",
        due_at="2020-01-01T00:00:00Z",
    )
    soon = await post(app_client, tenant.headers, "/v1/cases", subject="Soon", priority="low")
    done = await post(
        app_client,
        tenant.headers,
        "/v1/cases",
        subject="Done late",
        status="closed",
        resolution="Fixed",
        due_at="2020-01-01T00:00:00Z",
    )
    assert done["resolved_at"] is not None

    async def ids(**params: Any) -> list[str]:
        resp = await app_client.get("/v1/cases", params=params, headers=tenant.headers)
        assert resp.status_code == 200, resp.text
        return [c["id"] for c in resp.json()["data"]]

    assert await ids(overdue="true") == [late["id"]]
    assert set(await ids(overdue="false")) == {soon["id"], done["id"]}
    assert await ids(priority="low") == [soon["id"]]
    assert await ids(status="closed") == [done["id"]]
    assert (await ids(sort="due_at"))[-1] == soon["id"]
    assert_problem(
        await app_client.get("/v1/cases", params={"status": "lost"}, headers=tenant.headers),
        422,
        "validation",
    )
    assert_problem(
        await app_client.post(
            "/v1/cases",
            json={"subject": "x", "contact_id": late["id"]},
            headers=tenant.headers,
        ),
        422,
        "validation",
    )
    assert_problem(
        await app_client.post(
            "/v1/cases",
            json={"subject": "x", "due_at": "2026-01-01T00:00:00"},
            headers=tenant.headers,
        ),
        422,
        "validation",
    )


async def test_support_agent_works_cases(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    agent = await new_user(app_client, tenant, role="support_agent", password=PASSWORD)
    peer = await new_user(app_client, tenant, role="support_agent", password=PASSWORD)
    rep = await new_user(app_client, tenant, password=PASSWORD)
    agent_h = await sign_in(user_api, tenant, agent["email"])
    peer_h = await sign_in(user_api, tenant, peer["email"])
    rep_h = await sign_in(user_api, tenant, rep["email"])
    account = await post(
        app_client, tenant.headers, "/v1/accounts", name="Hooli", owner_id=agent["id"]
    )
    # Reads accounts and contacts, works cases, deletes none.
    assert (
        await app_client.get(f"/v1/accounts/{account['id']}", headers=agent_h)
    ).status_code == 200
    case = await post(
        app_client, agent_h, "/v1/cases", subject="Login fails", account_id=account["id"]
    )
    assert case["owner_id"] == agent["id"]
    path = f"/v1/cases/{case['id']}"
    assert (
        await app_client.patch(path, json={"priority": "high"}, headers=agent_h)
    ).status_code == 200
    assert_problem(await app_client.delete(path, headers=agent_h), 403, "forbidden")
    # Another agent does not see it (record scope) until it is shared.
    assert_problem(await app_client.get(path, headers=peer_h), 404, "not-found")
    listed = await app_client.get("/v1/cases", headers=peer_h)
    assert case["id"] not in [c["id"] for c in listed.json()["data"]]
    share = await app_client.post(f"{path}/shares", json={"user_id": peer["id"]}, headers=agent_h)
    assert share.status_code == 403  # agents may not share
    share = await app_client.post(
        f"{path}/shares", json={"user_id": peer["id"]}, headers=tenant.headers
    )
    assert share.status_code == 201, share.text
    assert (await app_client.get(path, headers=peer_h)).status_code == 200
    # Sales reps read cases but do not work them.
    assert_problem(
        await app_client.post("/v1/cases", json={"subject": "x"}, headers=rep_h), 403, "forbidden"
    )


async def test_cross_tenant(
    app_client: httpx.AsyncClient, tenant: Tenant, intruder: Tenant
) -> None:
    case = await post(app_client, tenant.headers, "/v1/cases", subject="Private")
    contact = await post(app_client, tenant.headers, "/v1/contacts", last_name="Mine")
    path = f"/v1/cases/{case['id']}"
    for method, url, body in (
        ("GET", path, None),
        ("PATCH", path, {"priority": "low"}),
        ("DELETE", path, None),
        ("GET", f"{path}/timeline", None),
        ("GET", f"{path}/history", None),
        ("GET", f"{path}/shares", None),
    ):
        resp = await app_client.request(method, url, json=body, headers=intruder.headers)
        assert_problem(resp, 404, "not-found")
    # Another tenant's contact is not a valid link.
    resp = await app_client.post(
        "/v1/cases", json={"subject": "x", "contact_id": contact["id"]}, headers=intruder.headers
    )
    assert_problem(resp, 422, "validation")
    listed = await app_client.get("/v1/cases", headers=intruder.headers)
    assert case["id"] not in [c["id"] for c in listed.json()["data"]]
