"""Merging records over a real shard: N records with per-field choices, every kind of
reference moved to the survivor (activities, cases, opportunities, contacts' account,
child accounts, shares without duplicate grants, custom lookups, converted leads), the
dry run, the Idempotency-Key, the audit, and the undo that restores everything exactly
(compared through the API and row by row in the shard as the superuser). On a plain
PostgreSQL shard, then on a Citus shard (tests/fixtures/engines.py)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.fixtures.api import Tenant
from tests.fixtures.engines import *  # noqa: F403 - the merges run on both shard engines
from tests.fixtures.engines import Platform
from tests.fixtures.problems import assert_problem
from tests.fixtures.users import new_user
from tests.merges.records import (
    BOOKKEEPING,
    activity,
    define,
    fetch,
    get,
    post,
    rows,
    share,
    shares_of,
    without,
)


async def _contacts_world(client: httpx.AsyncClient, tenant: Tenant) -> dict[str, Any]:
    """Three contacts to merge and everything that refers to two of them."""
    h = tenant.headers
    await define(
        client,
        tenant,
        "contacts",
        name="region",
        type="picklist",
        options={"values": ["EMEA", "Americas", "APAC"]},
    )
    await define(
        client, tenant, "contacts", name="referred_by", type="lookup", options={"target": "contact"}
    )
    await define(
        client,
        tenant,
        "accounts",
        name="main_contact",
        type="lookup",
        options={"target": "contact"},
    )
    a1 = await post(client, h, "/v1/accounts", name="Analytical Engines")
    a2 = await post(client, h, "/v1/accounts", name="Difference Engines")
    s = await post(
        client,
        h,
        "/v1/contacts",
        first_name="Ada",
        last_name="Lovelace",
        email="ada@engines.example",
        account_id=a1["id"],
        custom={"region": "EMEA"},
    )
    m1 = await post(
        client,
        h,
        "/v1/contacts?allow_duplicate=true",
        first_name="Augusta",
        last_name="Lovelace",
        email="augusta@engines.example",
        phone="+44 20 7946 0958",
        title="Countess",
        account_id=a2["id"],
        custom={"region": "Americas"},
    )
    m2 = await post(
        client,
        h,
        "/v1/contacts",
        last_name="Lovelace",
        tax_id="DE 811.907.980",
        custom={"referred_by": m1["id"]},
    )
    other = await post(
        client, h, "/v1/contacts", last_name="Babbage", custom={"referred_by": m1["id"]}
    )
    patched = await client.patch(
        f"/v1/accounts/{a1['id']}", json={"custom": {"main_contact": m2["id"]}}, headers=h
    )
    assert patched.status_code == 200, patched.text
    acts = [
        await activity(client, tenant, "Call one", contact_id=m1["id"]),
        await activity(client, tenant, "Call two", contact_id=m2["id"]),
        await activity(client, tenant, "Call three", contact_id=s["id"]),
    ]
    case = await post(client, h, "/v1/cases", subject="Engine jammed", contact_id=m1["id"])
    lead = await post(client, h, "/v1/leads", last_name="Lovelace", company="Engines")
    converted = await client.post(
        f"/v1/leads/{lead['id']}/convert",
        json={"account_id": a1["id"], "contact_id": m2["id"]},
        headers=h,
    )
    assert converted.status_code == 200, converted.text
    u1 = await new_user(client, tenant)
    u2 = await new_user(client, tenant)
    shares = {
        "m1_u1": await share(client, tenant, "contacts", m1["id"], u1["id"]),
        "m2_u1": await share(client, tenant, "contacts", m2["id"], u1["id"]),
        "m2_u2": await share(client, tenant, "contacts", m2["id"], u2["id"]),
        "s_u2": await share(client, tenant, "contacts", s["id"], u2["id"]),
    }
    return {
        "a1": a1,
        "a2": a2,
        "s": s,
        "m1": m1,
        "m2": m2,
        "other": other,
        "activities": acts,
        "case": case,
        "lead": lead,
        "u1": u1,
        "u2": u2,
        "shares": shares,
    }


async def _reads(client: httpx.AsyncClient, tenant: Tenant, w: dict[str, Any]) -> dict[str, Any]:
    """Everything the world's records show through the API."""
    h = tenant.headers
    out: dict[str, Any] = {}
    for key, path in (
        ("s", f"/v1/contacts/{w['s']['id']}"),
        ("m1", f"/v1/contacts/{w['m1']['id']}"),
        ("m2", f"/v1/contacts/{w['m2']['id']}"),
        ("other", f"/v1/contacts/{w['other']['id']}"),
        ("a1", f"/v1/accounts/{w['a1']['id']}"),
        ("case", f"/v1/cases/{w['case']['id']}"),
        ("lead", f"/v1/leads/{w['lead']['id']}"),
    ):
        resp = await client.get(path, headers=h)
        out[key] = resp.json() if resp.status_code == 200 else resp.status_code
    for key in ("s", "m1", "m2"):
        if isinstance(out[key], dict):
            out[f"{key}_shares"] = sorted(
                (x["id"], x["user_id"])
                for x in await shares_of(client, tenant, "contacts", w[key]["id"])
            )
            timeline = await get(client, h, f"/v1/activities?contact_id={w[key]['id']}")
            out[f"{key}_activities"] = sorted(a["id"] for a in timeline["data"])
    return out


def _content(read: Any) -> Any:
    return without(read, *BOOKKEEPING) if isinstance(read, dict) else read


async def test_merge_moves_every_reference_and_undo_restores_everything(
    app_client: httpx.AsyncClient, tenant: Tenant, platform: Platform
) -> None:
    h = tenant.headers
    w = await _contacts_world(app_client, tenant)
    s, m1, m2 = w["s"]["id"], w["m1"]["id"], w["m2"]["id"]
    before = await _reads(app_client, tenant, w)
    stored_before = await rows(platform, tenant, "contact", [s, m1, m2])
    values_before = await fetch(
        platform,
        tenant,
        "SELECT * FROM custom_value WHERE tenant_id = $1 AND record_id = ANY($2::uuid[]) "
        "ORDER BY record_id, field_id, item",
        uuid.UUID(tenant.id),
        [uuid.UUID(i) for i in (s, m1, m2)],
    )
    body = {
        "survivor_id": s,
        "merged_ids": [m1, m2],
        "fields": {
            "email": m1,
            "title": {"value": "Mathematician"},
            "custom": {"region": {"value": "APAC"}},
        },
    }

    # The dry run: the preview, and nothing changed.
    preview = await app_client.post("/v1/contacts/merge", json={**body, "dry_run": True}, headers=h)
    assert preview.status_code == 200, preview.text
    shown = preview.json()
    assert shown["dry_run"] is True
    assert shown["merge_id"] is None
    assert shown["survivor"]["email"] == "augusta@engines.example"
    assert shown["survivor"]["title"] == "Mathematician"
    assert shown["survivor"]["tax_id"] == "DE 811.907.980"  # the survivor had none
    assert shown["fields"]["email"]["chosen"] == m1
    assert [c["value"] for c in shown["fields"]["email"]["candidates"]] == [
        "ada@engines.example",
        "augusta@engines.example",
        None,
    ]
    assert shown["fields"]["title"]["chosen"] is None
    assert shown["fields"]["custom.region"]["value"] == "APAC"
    assert shown["reparented"]["activity.contact_id"] == 2
    assert await _reads(app_client, tenant, w) == before
    assert await rows(platform, tenant, "contact", [s, m1, m2]) == stored_before
    assert (await get(app_client, h, "/v1/merges"))["data"] == []

    # The merge, retried with its Idempotency-Key.
    keyed = {**h, "Idempotency-Key": f"merge-{uuid.uuid4().hex}"}
    resp = await app_client.post("/v1/contacts/merge", json=body, headers=keyed)
    assert resp.status_code == 201, resp.text
    merged = resp.json()
    merge_id = merged["merge_id"]
    assert resp.headers["location"] == f"/v1/merges/{merge_id}"
    again = await app_client.post("/v1/contacts/merge", json=body, headers=keyed)
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == merged
    other_body = await app_client.post(
        "/v1/contacts/merge", json={**body, "merged_ids": [m1]}, headers=keyed
    )
    assert_problem(other_body, 422, "idempotency-key-reused")

    survivor = await get(app_client, h, f"/v1/contacts/{s}")
    assert survivor == merged["survivor"]
    assert survivor["first_name"] == "Ada"
    assert survivor["email"] == "augusta@engines.example"
    assert survivor["phone"] == "+44 20 7946 0958"
    assert survivor["title"] == "Mathematician"
    assert survivor["tax_id"] == "DE 811.907.980"
    assert survivor["account_id"] == w["a1"]["id"]
    assert survivor["custom"] == {"region": "APAC"}
    for gone in (m1, m2):
        assert_problem(await app_client.get(f"/v1/contacts/{gone}", headers=h), 404, "not-found")
    # Found by the email it took (its blind index).
    found = await get(app_client, h, "/v1/contacts?email=Augusta@Engines.example")
    assert [c["id"] for c in found["data"]] == [s]

    # Every reference is the survivor's.
    after = await _reads(app_client, tenant, w)
    assert after["s_activities"] == sorted(a["id"] for a in w["activities"])
    assert after["case"]["contact_id"] == s
    assert after["lead"]["converted_contact_id"] == s
    assert after["other"]["custom"] == {"referred_by": s}
    assert after["a1"]["custom"] == {"main_contact": s}
    referring = await get(app_client, h, f"/v1/contacts?filter=custom.referred_by[eq]:{s}")
    assert [c["id"] for c in referring["data"]] == [w["other"]["id"]]
    # Shares: M1's grant to U1 moved; M2's grants duplicated ones the survivor had.
    grants = [user for _, user in after["s_shares"]]
    assert sorted(grants) == sorted([w["u1"]["id"], w["u2"]["id"]])
    assert merged["reparented"] == {
        "activity.contact_id": 2,
        "case.contact_id": 1,
        "custom.account.main_contact": 1,
        "custom.contact.referred_by": 1,
        "lead.converted_contact_id": 1,
        "record_share.dropped": 2,
        "record_share.record_id": 1,
    }

    # The merge is listed, shown and audited.
    listed = await get(app_client, h, "/v1/merges")
    assert [x["id"] for x in listed["data"]] == [merge_id]
    record = await get(app_client, h, f"/v1/merges/{merge_id}")
    assert record["state"] == "merged"
    assert record["survivor_id"] == s
    assert record["merged_ids"] == [m1, m2]
    assert record["actor"]["type"] == "client"
    audit = await get(app_client, h, "/v1/audit?type=contact.*")
    types = [e["type"] for e in audit["data"]]
    assert "contact.merged" in types
    assert types.count("contact.deleted") >= 2
    event = next(e for e in audit["data"] if e["type"] == "contact.merged")
    assert event["data"]["merge_id"] == merge_id
    assert "email" not in event["data"]["record"]  # sealed fields never in an event

    # Undo: everything as it was.
    undone = await app_client.post(f"/v1/merges/{merge_id}/undo", headers=h)
    assert undone.status_code == 200, undone.text
    assert undone.json()["state"] == "undone"
    assert undone.json()["skipped"] == []
    restored = await _reads(app_client, tenant, w)
    for key, read in before.items():
        if key in ("m1", "m2", "m1_shares", "m2_shares", "s_shares"):
            assert restored[key] == read, key  # exactly, version included
        else:
            assert _content(restored[key]) == _content(read), key
    stored_after = await rows(platform, tenant, "contact", [s, m1, m2])
    for merged_id in (m1, m2):
        assert stored_after[merged_id] == stored_before[merged_id]  # ciphertexts included
    assert without(stored_after[s], *BOOKKEEPING, "enc_version", "email_enc", "tax_id_enc") == (
        without(stored_before[s], *BOOKKEEPING, "enc_version", "email_enc", "tax_id_enc")
    )
    values_after = await fetch(
        platform,
        tenant,
        "SELECT * FROM custom_value WHERE tenant_id = $1 AND record_id = ANY($2::uuid[]) "
        "ORDER BY record_id, field_id, item",
        uuid.UUID(tenant.id),
        [uuid.UUID(i) for i in (s, m1, m2)],
    )
    assert values_after == values_before
    # Once is enough.
    assert_problem(await app_client.post(f"/v1/merges/{merge_id}/undo", headers=h), 409, "conflict")
    assert (await get(app_client, h, f"/v1/merges/{merge_id}"))["state"] == "undone"
    audit = await get(app_client, h, "/v1/audit?type=contact.*")
    assert "contact.unmerged" in [e["type"] for e in audit["data"]]


async def test_account_merge_moves_contacts_deals_cases_children_and_conversions(
    app_client: httpx.AsyncClient, tenant: Tenant, platform: Platform
) -> None:
    h = tenant.headers
    a = await post(app_client, h, "/v1/accounts", name="Globex", domain="globex.example")
    b = await post(app_client, h, "/v1/accounts", name="Globex Corp", tax_id="811907980")
    c = await post(app_client, h, "/v1/accounts", name="Globex Inc", parent_id=a["id"])
    child = await post(app_client, h, "/v1/accounts", name="Globex Labs", parent_id=b["id"])
    contact = await post(app_client, h, "/v1/contacts", last_name="Scorpio", account_id=b["id"])
    deal = await post(
        app_client,
        h,
        "/v1/opportunities",
        name="Doomsday device",
        account_id=c["id"],
        amount="1000.00",
        currency="USD",
    )
    case = await post(app_client, h, "/v1/cases", subject="Broken", account_id=b["id"])
    note = await activity(app_client, tenant, "Visit", account_id=c["id"])
    lead = await post(app_client, h, "/v1/leads", last_name="Scorpio", company="Globex")
    converted = await app_client.post(
        f"/v1/leads/{lead['id']}/convert", json={"account_id": b["id"]}, headers=h
    )
    assert converted.status_code == 200, converted.text
    stored_before = await rows(platform, tenant, "account", [a["id"], b["id"], c["id"]])

    resp = await app_client.post(
        "/v1/accounts/merge",
        json={
            "survivor_id": a["id"],
            "merged_ids": [b["id"], c["id"]],
            "fields": {"name": c["id"]},
        },
        headers=h,
    )
    assert resp.status_code == 201, resp.text
    merged = resp.json()
    survivor = merged["survivor"]
    assert survivor["name"] == "Globex Inc"
    assert survivor["domain"] == "globex.example"
    assert survivor["tax_id"] == "811907980"
    assert survivor["parent_id"] is None
    assert (await get(app_client, h, f"/v1/accounts/{child['id']}"))["parent_id"] == a["id"]
    assert (await get(app_client, h, f"/v1/contacts/{contact['id']}"))["account_id"] == a["id"]
    assert (await get(app_client, h, f"/v1/opportunities/{deal['id']}"))["account_id"] == a["id"]
    assert (await get(app_client, h, f"/v1/cases/{case['id']}"))["account_id"] == a["id"]
    assert (await get(app_client, h, f"/v1/activities/{note['id']}"))["account_id"] == a["id"]
    converted_lead = await get(app_client, h, f"/v1/leads/{lead['id']}")
    assert converted_lead["converted_account_id"] == a["id"]
    # The new contact the conversion made is the account's too.
    made = converted.json()["contact_id"]
    assert (await get(app_client, h, f"/v1/contacts/{made}"))["account_id"] == a["id"]
    assert merged["reparented"]["account.parent_id"] == 1
    assert merged["reparented"]["contact.account_id"] == 2
    assert merged["reparented"]["opportunity.account_id"] == 1

    undone = await app_client.post(f"/v1/merges/{merged['merge_id']}/undo", headers=h)
    assert undone.status_code == 200, undone.text
    stored_after = await rows(platform, tenant, "account", [a["id"], b["id"], c["id"]])
    assert stored_after[b["id"]] == stored_before[b["id"]]
    assert stored_after[c["id"]] == stored_before[c["id"]]
    assert without(stored_after[a["id"]], *BOOKKEEPING) == without(
        stored_before[a["id"]], *BOOKKEEPING
    )
    assert (await get(app_client, h, f"/v1/accounts/{child['id']}"))["parent_id"] == b["id"]
    assert (await get(app_client, h, f"/v1/contacts/{contact['id']}"))["account_id"] == b["id"]
    assert (await get(app_client, h, f"/v1/opportunities/{deal['id']}"))["account_id"] == c["id"]
    assert (await get(app_client, h, f"/v1/cases/{case['id']}"))["account_id"] == b["id"]
    assert (await get(app_client, h, f"/v1/activities/{note['id']}"))["account_id"] == c["id"]
    assert (await get(app_client, h, f"/v1/leads/{lead['id']}"))["converted_account_id"] == b["id"]


async def test_lead_merge_rescores_and_refuses_converted_leads(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    await post(
        app_client,
        h,
        "/v1/lead-scoring/rules",
        name="Two calls",
        points=30,
        condition={"type": "activity", "activity_type": "call", "min_count": 2},
    )
    leads = [
        await post(app_client, h, "/v1/leads", last_name="Hopper", company=f"Cobol {n}")
        for n in range(4)
    ]
    for lead in leads[1:3]:
        await activity(app_client, tenant, "Call", lead_id=lead["id"])
    resp = await app_client.post(
        "/v1/leads/merge",
        json={
            "survivor_id": leads[0]["id"],
            "merged_ids": [leads[1]["id"], leads[2]["id"]],
            "fields": {"company": leads[2]["id"], "status": {"value": "working"}},
        },
        headers=h,
    )
    assert resp.status_code == 201, resp.text
    survivor = resp.json()["survivor"]
    assert survivor["company"] == "Cobol 2"
    assert survivor["status"] == "working"
    assert survivor["score"] == 30  # the two calls are the survivor's now
    convert = await app_client.post(f"/v1/leads/{leads[3]['id']}/convert", json={}, headers=h)
    assert convert.status_code == 200, convert.text
    refused = await app_client.post(
        "/v1/leads/merge",
        json={"survivor_id": leads[0]["id"], "merged_ids": [leads[3]["id"]]},
        headers=h,
    )
    assert_problem(refused, 409, "lead-converted")


async def test_merge_requests_that_do_not_hold(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    x = await post(app_client, h, "/v1/accounts", name="X")
    y = await post(app_client, h, "/v1/accounts", name="Y")
    same = await app_client.post(
        "/v1/accounts/merge", json={"survivor_id": x["id"], "merged_ids": [x["id"]]}, headers=h
    )
    assert assert_problem(same, 422, "validation")["errors"][0]["type"] == "unique"
    stranger = str(uuid.uuid4())
    chosen = await app_client.post(
        "/v1/accounts/merge",
        json={"survivor_id": x["id"], "merged_ids": [y["id"]], "fields": {"name": stranger}},
        headers=h,
    )
    assert assert_problem(chosen, 422, "validation")["errors"][0]["type"] == "not_found"
    missing = await app_client.post(
        "/v1/accounts/merge", json={"survivor_id": x["id"], "merged_ids": [stranger]}, headers=h
    )
    assert_problem(missing, 404, "not-found")
    too_many = await app_client.post(
        "/v1/accounts/merge",
        json={"survivor_id": x["id"], "merged_ids": [str(uuid.uuid4()) for _ in range(101)]},
        headers=h,
    )
    assert_problem(too_many, 422, "validation")
    bad_value = await app_client.post(
        "/v1/accounts/merge",
        json={
            "survivor_id": x["id"],
            "merged_ids": [y["id"]],
            "fields": {"domain": {"value": "not a domain"}},
        },
        headers=h,
    )
    assert_problem(bad_value, 422, "validation")
    for method in ("GET", "PATCH", "DELETE"):
        resp = await app_client.request(method, "/v1/accounts/merge", headers=h)
        assert_problem(resp, 405, "method-not-allowed")
        assert resp.headers["allow"] == "POST"
    # Nothing happened.
    assert (await app_client.get(f"/v1/accounts/{y['id']}", headers=h)).status_code == 200
