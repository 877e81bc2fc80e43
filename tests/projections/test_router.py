"""The interaction endpoints: a record's summary, the list (sorts, filters, keyset pages,
validation), record scope, other tenants and missing permissions."""

from __future__ import annotations

from typing import Any

import httpx

from meridian.operations import rebuild_projections
from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.users import PASSWORD, new_user, sign_in
from tests.projections.helpers import activity, ago, ahead, post, runtime_of
from tests.roles.helpers import permissions, role_headers


async def rebuilt(client: httpx.AsyncClient, tenant: Tenant) -> None:
    """The summaries as the worker would keep them, computed at once."""
    await rebuild_projections(runtime_of(client), tenant.id)


async def listed(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    """Every row of the list, page by page (two per page)."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"limit": 2, **params, **({"cursor": cursor} if cursor else {})}
        resp = await client.get("/v1/interactions", params=query, headers=headers)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert len(body["data"]) <= 2
        rows += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows


def names(rows: list[dict[str, Any]]) -> list[str]:
    return [r["record"]["name"] for r in rows]


async def test_the_list_sorts_filters_and_pages(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    ids = {
        n: await post(app_client, tenant, "/v1/contacts", first_name="Ada", last_name=n)
        for n in ("A", "B", "C", "D", "E")
    }
    await activity(app_client, tenant, "call", ago(days=1), contact_id=ids["A"])
    await activity(app_client, tenant, "task", ahead(days=2), contact_id=ids["A"])
    for days in (2, 3, 4):
        await activity(app_client, tenant, "call", ago(days=days), contact_id=ids["B"])
    await activity(app_client, tenant, "email", ago(days=60), contact_id=ids["C"])
    await activity(app_client, tenant, "task", ahead(days=5), contact_id=ids["D"])
    await rebuilt(app_client, tenant)
    h = tenant.headers

    # Newest first by default; D has no past activity (oldest), E no activity at all.
    rows = await listed(app_client, h, kind="contact")
    assert names(rows) == ["Ada A", "Ada B", "Ada C", "Ada D"]
    first = rows[0]
    assert first["record"] == {"kind": "contact", "id": ids["A"], "name": "Ada A", "owner_id": None}
    assert first["activities_30d"] == 1
    assert first["by_type_30d"]["call"] == 1
    assert first["next_task_id"] is not None
    assert rows[3]["last_activity_at"] is None
    assert names(await listed(app_client, h, kind="contact", sort="last_activity_at")) == [
        "Ada D",
        "Ada C",
        "Ada B",
        "Ada A",
    ]
    assert names(await listed(app_client, h, kind="contact", sort="-activities_30d"))[:2] == [
        "Ada B",
        "Ada A",
    ]
    by_task = names(await listed(app_client, h, kind="contact", sort="next_task_due_at"))
    assert by_task[:2] == ["Ada A", "Ada D"]
    assert sorted(by_task[2:]) == ["Ada B", "Ada C"]

    # Filters.
    old = await listed(app_client, h, kind="contact", last_activity_before=ago(days=10))
    assert names(old) == ["Ada C"]
    recent = await listed(app_client, h, kind="contact", last_activity_after=ago(days=3))
    assert names(recent) == ["Ada A", "Ada B"]
    busy = await listed(app_client, h, kind="contact", min_activities_30d=2)
    assert names(busy) == ["Ada B"]
    assert names(await listed(app_client, h, kind="contact", has_next_task="true")) == [
        "Ada A",
        "Ada D",
    ]
    assert names(await listed(app_client, h, kind="contact", has_next_task="false")) == [
        "Ada B",
        "Ada C",
    ]
    # Other kinds have their own rows: no account or opportunity has activities here.
    assert await listed(app_client, h, kind="account") == []

    # A record's own summary, with no activity at all.
    empty = await app_client.get(f"/v1/contacts/{ids['E']}/interactions", headers=h)
    assert empty.status_code == 200, empty.text
    assert empty.json()["computed_at"] is None
    assert empty.json()["by_type_90d"] == {
        "call": 0,
        "email": 0,
        "meeting": 0,
        "note": 0,
        "task": 0,
    }


async def test_bad_parameters_are_named(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    h = tenant.headers
    for params, name in (
        ({}, "kind"),
        ({"kind": "pipeline"}, "kind"),
        ({"kind": "contact", "sort": "name"}, "sort"),
        (
            {"kind": "contact", "last_activity_before": "2026-01-01T00:00:00"},
            "last_activity_before",
        ),
        ({"kind": "contact", "min_activities_30d": "-1"}, "min_activities_30d"),
        ({"kind": "contact", "has_next_task": "maybe"}, "has_next_task"),
        ({"kind": "contact", "limit": "0"}, "limit"),
    ):
        resp = await app_client.get("/v1/interactions", params=params, headers=h)
        body = assert_problem(resp, 422, "validation", name)
        assert [e["loc"][-1] for e in body["errors"]] == [name], body
    assert_problem(
        await app_client.get(
            "/v1/interactions", params={"kind": "contact", "cursor": "nope"}, headers=h
        ),
        400,
        "invalid-cursor",
    )
    # A cursor works only with the sort and filters it was issued for.
    contacts = [await post(app_client, tenant, "/v1/contacts", last_name=f"K{i}") for i in range(3)]
    for contact in contacts:
        await activity(app_client, tenant, "note", ago(days=1), contact_id=contact)
    await rebuilt(app_client, tenant)
    page = await app_client.get(
        "/v1/interactions", params={"kind": "contact", "limit": 1}, headers=h
    )
    cursor = page.json()["next_cursor"]
    assert cursor
    for other in ({"kind": "account"}, {"kind": "contact", "sort": "activities_30d"}):
        assert_problem(
            await app_client.get("/v1/interactions", params={**other, "cursor": cursor}, headers=h),
            400,
            "invalid-cursor",
        )


async def test_a_scoped_rep_sees_only_their_records_summaries(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    rep = await new_user(app_client, tenant, role="sales_rep", password=PASSWORD)
    peer = await new_user(app_client, tenant, role="sales_rep")
    mine = await post(app_client, tenant, "/v1/contacts", last_name="Mine", owner_id=rep["id"])
    theirs = await post(app_client, tenant, "/v1/contacts", last_name="Theirs", owner_id=peer["id"])
    account = await post(app_client, tenant, "/v1/accounts", name="Theirs Inc", owner_id=peer["id"])
    for contact in (mine, theirs):
        await activity(app_client, tenant, "call", ago(days=1), contact_id=contact)
    await activity(app_client, tenant, "meeting", ago(days=1), account_id=account)
    await rebuilt(app_client, tenant)
    headers = await sign_in(user_api, tenant, rep["email"])

    rows = await listed(app_client, headers, kind="contact")
    assert [r["record"]["id"] for r in rows] == [mine]
    assert await listed(app_client, headers, kind="account") == []
    assert await listed(app_client, headers, kind="contact", sort="-activities_30d") == rows
    own = await app_client.get(f"/v1/contacts/{mine}/interactions", headers=headers)
    assert own.status_code == 200, own.text
    assert own.json()["activities_30d"] == 1
    for path in (f"/v1/contacts/{theirs}/interactions", f"/v1/accounts/{account}/interactions"):
        assert_problem(await app_client.get(path, headers=headers), 404, "not-found")
    # The tenant's client sees both.
    assert len(await listed(app_client, tenant.headers, kind="contact")) == 2


async def test_other_tenants_get_404_and_list_nothing(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    account = await post(app_client, tenant, "/v1/accounts", name="Mine")
    contact = await post(app_client, tenant, "/v1/contacts", last_name="Mine", account_id=account)
    opportunity = await post(
        app_client, tenant, "/v1/opportunities", name="Deal", currency="USD", account_id=account
    )
    await activity(
        app_client, tenant, "call", ago(days=1), opportunity_id=opportunity, contact_id=contact
    )
    await rebuilt(app_client, tenant)
    for path in (
        f"/v1/contacts/{contact}/interactions",
        f"/v1/accounts/{account}/interactions",
        f"/v1/opportunities/{opportunity}/interactions",
    ):
        ok = await app_client.get(path, headers=tenant.headers)
        assert ok.status_code == 200, ok.text
        assert ok.json()["activities_30d"] == 1
        assert_problem(await app_client.get(path, headers=other_tenant.headers), 404, "not-found")
    for kind in ("contact", "account", "opportunity"):
        assert len(await listed(app_client, tenant.headers, kind=kind)) == 1
        assert await listed(app_client, other_tenant.headers, kind=kind) == []


async def test_summaries_need_both_the_records_and_the_activities_permission(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    contact = await post(app_client, tenant, "/v1/contacts", last_name="Guarded")
    for name, perms in (
        ("contact_reader", [("contacts", "read")]),
        ("activity_reader", [("activities", "read")]),
    ):
        made = await app_client.post(
            "/v1/roles",
            json={"name": name, "permissions": permissions(*perms)},
            headers=tenant.headers,
        )
        assert made.status_code == 201, made.text
    contacts_only = await role_headers(app_client, tenant, "contact_reader")
    activities_only = await role_headers(app_client, tenant, "activity_reader")
    path = f"/v1/contacts/{contact}/interactions"
    assert_problem(
        await app_client.get(path, headers=contacts_only), 403, "forbidden", "activities"
    )
    assert_problem(
        await app_client.get(path, headers=activities_only), 403, "forbidden", "contacts"
    )
    assert_problem(
        await app_client.get("/v1/interactions", params={"kind": "contact"}, headers=contacts_only),
        403,
        "forbidden",
        "activities",
    )
    assert_problem(
        await app_client.get(
            "/v1/interactions", params={"kind": "contact"}, headers=activities_only
        ),
        403,
        "forbidden",
        "contacts",
    )
