"""The lead API over a real shard: CRUD with sealed fields, scoring, conversion,
record scope and isolation."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from meridian.settings import Settings
from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.users import new_user, new_user_id, sign_in
from tests.fixtures.waiting import eventually
from tests.fixtures.worker import running_worker

PASSWORD = "correct horse battery staple"
Headers = dict[str, str]


async def post(
    client: httpx.AsyncClient, headers: Headers, path: str, **body: Any
) -> dict[str, Any]:
    resp = await client.post(path, json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    made: dict[str, Any] = resp.json()
    return made


async def new_lead(client: httpx.AsyncClient, tenant: Tenant, **body: Any) -> dict[str, Any]:
    body.setdefault("last_name", "Hopper")
    return await post(client, tenant.headers, "/v1/leads", **body)


async def rule(
    client: httpx.AsyncClient, tenant: Tenant, name: str, points: int, **condition: Any
) -> dict[str, Any]:
    return await post(
        client,
        tenant.headers,
        "/v1/lead-scoring/rules",
        name=name,
        points=points,
        condition=condition,
    )


async def get_lead(client: httpx.AsyncClient, tenant: Tenant, lead_id: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/leads/{lead_id}", headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    lead: dict[str, Any] = resp.json()
    return lead


async def test_lead_crud_with_sealed_fields(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    lead = await new_lead(
        app_client,
        tenant,
        first_name="Grace",
        company="Cobol Systems",
        email=" Grace@Cobol.Example ",
        phone="+1 (415) 555-0100",
        source="referral",
    )
    assert lead["email"] == "grace@cobol.example"
    assert lead["status"] == "new"
    assert lead["score"] == 0
    assert lead["score_details"] == []
    assert lead["converted_at"] is None
    path = f"/v1/leads/{lead['id']}"
    changed = await app_client.patch(
        path, json={"status": "working"}, headers={**tenant.headers, "If-Match": '"1"'}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["status"] == "working"
    assert changed.json()["email"] == "grace@cobol.example"
    # The sealed fields are found by their blind index only, exactly.
    found = await app_client.get(
        "/v1/leads", params={"email": "GRACE@cobol.example"}, headers=tenant.headers
    )
    assert [row["id"] for row in found.json()["data"]] == [lead["id"]]
    # "converted" is the conversion's to set.
    assert_problem(
        await app_client.patch(path, json={"status": "converted"}, headers=tenant.headers),
        422,
        "validation",
    )
    assert_problem(
        await app_client.post("/v1/leads", json={"last_name": " "}, headers=tenant.headers),
        422,
        "validation",
    )
    assert (await app_client.delete(path, headers=tenant.headers)).status_code == 204
    assert_problem(await app_client.get(path, headers=tenant.headers), 404, "not-found")


async def test_stored_encrypted(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    lead = await new_lead(app_client, tenant, email="secret@example.com", phone="+44 20 7946 0958")
    runtime: Any = app_client.app.state.runtime  # type: ignore[attr-defined]
    context = await runtime.directory.resolve(uuid.UUID(tenant.id))
    async with runtime.router.transaction(context, write=False) as session:
        from sqlalchemy import text

        row = (
            await session.execute(
                text("SELECT email_enc, phone_enc FROM lead WHERE tenant_id = :t AND id = :i"),
                {"t": tenant.id, "i": lead["id"]},
            )
        ).one()
    assert b"secret@example.com" not in row[0]
    assert b"7946" not in row[1]


async def test_rules_score_leads_and_explain_it(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    referred = await rule(
        app_client, tenant, "Referred", 20, type="field", field="source", op="eq", value="referral"
    )
    await rule(app_client, tenant, "Has email", 5, type="field", field="email", op="present")
    await rule(
        app_client,
        tenant,
        "Big company",
        10,
        type="field",
        field="company",
        op="in",
        value=["Globex", "Initech"],
    )
    lead = await new_lead(app_client, tenant, source="referral", email="x@globex.example")
    assert lead["score"] == 25
    assert [d["name"] for d in lead["score_details"]] == ["Has email", "Referred"]
    assert lead["score_details"][1] == {
        "rule_id": referred["id"],
        "name": "Referred",
        "points": 20,
        "reason": "source eq referral",
    }
    # Recalculated on change: the company now matches (case-insensitively), the email
    # is gone.
    resp = await app_client.patch(
        f"/v1/leads/{lead['id']}",
        json={"company": "globex", "email": None},
        headers=tenant.headers,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["score"] == 30
    # Sorted by score, hottest first.
    cold = await new_lead(app_client, tenant)
    page = await app_client.get("/v1/leads", params={"sort": "-score"}, headers=tenant.headers)
    ids = [row["id"] for row in page.json()["data"]]
    assert ids.index(lead["id"]) < ids.index(cold["id"])


async def test_activity_counts_score_at_once(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    await rule(
        app_client, tenant, "Two calls", 15, type="activity", activity_type="call", min_count=2
    )
    await rule(app_client, tenant, "Any three", 7, type="activity", min_count=3)
    lead = await new_lead(app_client, tenant)
    for n, kind in enumerate(("call", "email", "call")):
        await post(
            app_client,
            tenant.headers,
            "/v1/activities",
            type=kind,
            subject=f"touch {n}",
            occurred_at="2026-11-01T10:00:00Z",
            lead_id=lead["id"],
        )
    scored = await get_lead(app_client, tenant, lead["id"])
    assert scored["score"] == 22
    reasons = {d["name"]: d["reason"] for d in scored["score_details"]}
    assert reasons == {
        "Any three": "3 activities (at least 3)",
        "Two calls": "2 call activities (at least 2)",
    }
    timeline = await app_client.get(f"/v1/leads/{lead['id']}/timeline", headers=tenant.headers)
    assert [a["subject"] for a in timeline.json()["data"]] == ["touch 2", "touch 1", "touch 0"]


async def test_rule_changes_rescore_every_lead_in_the_worker(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    leads = [await new_lead(app_client, tenant, source="event") for _ in range(3)]
    other = await new_lead(app_client, tenant, source="web")
    async with running_worker(settings):
        made = await rule(
            app_client, tenant, "Events", 12, type="field", field="source", op="eq", value="event"
        )

        async def scores() -> list[int]:
            return [(await get_lead(app_client, tenant, x["id"]))["score"] for x in leads]

        await eventually(lambda: _all(scores, 12))
        assert (await get_lead(app_client, tenant, other["id"]))["score"] == 0
        # Switched off: the points go.
        resp = await app_client.patch(
            f"/v1/lead-scoring/rules/{made['id']}", json={"active": False}, headers=tenant.headers
        )
        assert resp.status_code == 200, resp.text
        await eventually(lambda: _all(scores, 0))


async def _all(values: Any, wanted: int) -> bool:
    return all(v == wanted for v in await values())


async def test_rules_are_validated(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    bad = [
        {"type": "field", "field": "email", "op": "eq", "value": "a@b.example"},
        {"type": "field", "field": "source", "op": "eq", "value": "carrier pigeon"},
        {"type": "field", "field": "company", "op": "in", "value": "Acme"},
        {"type": "field", "field": "company", "op": "present", "value": "Acme"},
        {"type": "field", "field": "salary", "op": "eq", "value": "1"},
        {"type": "activity", "min_count": 0},
        {"type": "telepathy"},
    ]
    for condition in bad:
        resp = await app_client.post(
            "/v1/lead-scoring/rules",
            json={"name": "Bad", "points": 1, "condition": condition},
            headers=tenant.headers,
        )
        assert_problem(resp, 422, "validation")
    body = {"name": "Dup", "points": 1, "condition": {"type": "activity", "min_count": 1}}
    assert (
        await app_client.post("/v1/lead-scoring/rules", json=body, headers=tenant.headers)
    ).status_code == 201
    assert_problem(
        await app_client.post("/v1/lead-scoring/rules", json=body, headers=tenant.headers),
        409,
        "conflict",
    )
    resp = await app_client.post(
        "/v1/lead-scoring/rules",
        json={**body, "name": "Huge", "points": 5000},
        headers=tenant.headers,
    )
    assert_problem(resp, 422, "validation")


async def test_conversion_creates_account_contact_and_opportunity(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    owner = await new_user_id(app_client, tenant)
    lead = await new_lead(
        app_client,
        tenant,
        first_name="Grace",
        company="Cobol Systems",
        email="grace@cobol.example",
        phone="+1 415 555 0100",
        title="CTO",
        owner_id=owner,
    )
    path = f"/v1/leads/{lead['id']}/convert"
    body = {"opportunity": {"name": "First order", "amount": "1200.50", "currency": "usd"}}
    resp = await app_client.post(path, json=body, headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    done = resp.json()
    assert done["converted_now"] is True
    assert done["lead"]["status"] == "converted"
    assert done["lead"]["converted_contact_id"] == done["contact_id"]
    account = (
        await app_client.get(f"/v1/accounts/{done['account_id']}", headers=tenant.headers)
    ).json()
    contact = (
        await app_client.get(f"/v1/contacts/{done['contact_id']}", headers=tenant.headers)
    ).json()
    deal = (
        await app_client.get(f"/v1/opportunities/{done['opportunity_id']}", headers=tenant.headers)
    ).json()
    assert account["name"] == "Cobol Systems"
    assert account["owner_id"] == owner
    assert (contact["first_name"], contact["last_name"]) == ("Grace", "Hopper")
    assert contact["email"] == "grace@cobol.example"
    assert contact["phone"] == "+1 415 555 0100"
    assert contact["account_id"] == done["account_id"]
    assert contact["owner_id"] == owner
    assert (deal["amount"], deal["currency"], deal["account_id"]) == (
        "1200.50",
        "USD",
        done["account_id"],
    )
    # Idempotent: again, nothing new.
    again = await app_client.post(path, json=body, headers=tenant.headers)
    assert again.status_code == 200
    assert again.json()["converted_now"] is False
    assert {k: again.json()[k] for k in ("account_id", "contact_id", "opportunity_id")} == {
        k: done[k] for k in ("account_id", "contact_id", "opportunity_id")
    }
    contacts = await app_client.get(
        "/v1/contacts", params={"email": "grace@cobol.example"}, headers=tenant.headers
    )
    assert len(contacts.json()["data"]) == 1
    # A converted lead is kept as it was.
    assert_problem(
        await app_client.patch(
            f"/v1/leads/{lead['id']}", json={"company": "X"}, headers=tenant.headers
        ),
        409,
        "lead-converted",
    )


async def test_conversion_links_existing_records_and_is_all_or_nothing(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    account = await post(app_client, tenant.headers, "/v1/accounts", name="Globex")
    existing = await post(
        app_client,
        tenant.headers,
        "/v1/contacts",
        last_name="Simpson",
        email="homer@globex.example",
    )
    lead = await new_lead(app_client, tenant, email="homer@globex.example")
    path = f"/v1/leads/{lead['id']}/convert"
    # Its email is on a contact: the duplicate is named, and nothing was created.
    dup = await app_client.post(path, json={"account_id": account["id"]}, headers=tenant.headers)
    assert_problem(dup, 409, "duplicate")
    assert dup.json()["duplicate_of"] == existing["id"]
    assert (await get_lead(app_client, tenant, lead["id"]))["status"] == "new"
    # A bad opportunity rolls the whole conversion back (the account was to be created).
    before = await app_client.get("/v1/accounts", headers=tenant.headers)
    bad = await app_client.post(
        path,
        json={
            "contact_id": existing["id"],
            "opportunity": {"name": "X", "currency": "EUR", "stage_id": str(uuid.uuid4())},
        },
        headers=tenant.headers,
    )
    assert bad.status_code == 422, bad.text
    after = await app_client.get("/v1/accounts", headers=tenant.headers)
    assert len(after.json()["data"]) == len(before.json()["data"])
    # Linking both.
    ok = await app_client.post(
        path,
        json={"account_id": account["id"], "contact_id": existing["id"]},
        headers=tenant.headers,
    )
    assert ok.status_code == 200, ok.text
    assert (ok.json()["account_id"], ok.json()["contact_id"], ok.json()["opportunity_id"]) == (
        account["id"],
        existing["id"],
        None,
    )
    missing = await new_lead(app_client, tenant)
    assert_problem(
        await app_client.post(
            f"/v1/leads/{missing['id']}/convert",
            json={"account_id": str(uuid.uuid4())},
            headers=tenant.headers,
        ),
        422,
        "validation",
    )


async def test_scope_and_roles(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    rep = await new_user(app_client, tenant, password=PASSWORD)
    peer = await new_user(app_client, tenant, password=PASSWORD)
    agent = await new_user(app_client, tenant, role="support_agent", password=PASSWORD)
    rep_h = await sign_in(user_api, tenant, rep["email"])
    peer_h = await sign_in(user_api, tenant, peer["email"])
    agent_h = await sign_in(user_api, tenant, agent["email"])
    mine = await post(app_client, rep_h, "/v1/leads", last_name="Mine", email="m@example.com")
    assert mine["owner_id"] == rep["id"]
    path = f"/v1/leads/{mine['id']}"
    # Out of the peer's scope: as if it did not exist, for every verb.
    assert_problem(await app_client.get(path, headers=peer_h), 404, "not-found")
    assert_problem(
        await app_client.patch(path, json={"title": "x"}, headers=peer_h), 404, "not-found"
    )
    assert_problem(
        await app_client.post(f"{path}/convert", json={}, headers=peer_h), 404, "not-found"
    )
    assert_problem(await app_client.get(f"{path}/timeline", headers=peer_h), 404, "not-found")
    assert_problem(await app_client.get(f"{path}/history", headers=peer_h), 404, "not-found")
    listed = await app_client.get("/v1/leads", headers=peer_h)
    assert mine["id"] not in [row["id"] for row in listed.json()["data"]]
    # Shared with the peer: visible.
    share = await app_client.post(f"{path}/shares", json={"user_id": peer["id"]}, headers=rep_h)
    assert share.status_code == 201, share.text
    assert (await app_client.get(path, headers=peer_h)).status_code == 200
    # Support agents work cases, not leads.
    assert_problem(await app_client.get("/v1/leads", headers=agent_h), 403, "forbidden")
    # A sales rep reads the scoring rules but may not change them.
    assert (await app_client.get("/v1/lead-scoring/rules", headers=rep_h)).status_code == 200
    assert_problem(
        await app_client.post(
            "/v1/lead-scoring/rules",
            json={"name": "R", "points": 1, "condition": {"type": "activity", "min_count": 1}},
            headers=rep_h,
        ),
        403,
        "forbidden",
    )


async def test_history_shows_score_changes(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    await rule(app_client, tenant, "Titled", 3, type="field", field="title", op="present")
    lead = await new_lead(app_client, tenant)
    await app_client.patch(f"/v1/leads/{lead['id']}", json={"title": "VP"}, headers=tenant.headers)
    resp = await app_client.get(
        f"/v1/leads/{lead['id']}/history", params={"field": "score"}, headers=tenant.headers
    )
    assert resp.status_code == 200, resp.text
    changes = [e["changes"] for e in resp.json()["data"]]
    assert changes[0] == [{"field": "score", "from": 0, "to": 3}]


async def test_cross_tenant(
    app_client: httpx.AsyncClient, tenant: Tenant, intruder: Tenant
) -> None:
    lead = await new_lead(app_client, tenant, email="only@tenant.example")
    made = await rule(app_client, tenant, "R", 1, type="activity", min_count=1)
    for method, path, body in (
        ("GET", f"/v1/leads/{lead['id']}", None),
        ("PATCH", f"/v1/leads/{lead['id']}", {"title": "x"}),
        ("DELETE", f"/v1/leads/{lead['id']}", None),
        ("POST", f"/v1/leads/{lead['id']}/convert", {}),
        ("GET", f"/v1/leads/{lead['id']}/timeline", None),
        ("GET", f"/v1/leads/{lead['id']}/history", None),
        ("GET", f"/v1/lead-scoring/rules/{made['id']}", None),
        ("PATCH", f"/v1/lead-scoring/rules/{made['id']}", {"points": 2}),
        ("DELETE", f"/v1/lead-scoring/rules/{made['id']}", None),
    ):
        resp = await app_client.request(method, path, json=body, headers=intruder.headers)
        assert_problem(resp, 404, "not-found")
    listed = await app_client.get(
        "/v1/leads", params={"email": "only@tenant.example"}, headers=intruder.headers
    )
    assert listed.json()["data"] == []
    # An activity on another tenant's lead is refused as a missing link.
    resp = await app_client.post(
        "/v1/activities",
        json={
            "type": "call",
            "subject": "x",
            "occurred_at": "2026-11-01T10:00:00Z",
            "lead_id": lead["id"],
        },
        headers=intruder.headers,
    )
    assert_problem(resp, 422, "validation")
    assert (await get_lead(app_client, tenant, lead["id"]))["version"] == 1
