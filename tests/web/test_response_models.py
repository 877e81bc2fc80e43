"""Every operation's actual responses match what it declares (tests/fixtures/response_models.py).

Handlers build their responses by hand, so nothing else holds a body to the route's
``response_model``. One realistic session drives every operation of the API with the
checker on: a tenant onboarded and administered; each kind of record created (and the
creation retried with its Idempotency-Key: the replay is built from the stored copy),
read, listed, changed and deleted; shares, users, roles, user tokens; and the answers
clients branch on (304, 400, 401, 403, 404, 409, 412, 413, 415, 422, OAuth errors).
A response that does not match fails the request that got it; at the end every
operation with a declared model must have had a success response checked. The tenant
lives on a plain PostgreSQL shard, then on a Citus shard (tests/fixtures/engines.py).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from meridian.settings import Settings
from tests.fixtures.api import AdminToken, Tenant, token_for
from tests.fixtures.engines import *  # noqa: F403 - the session runs on both shard engines
from tests.fixtures.engines import Platform
from tests.fixtures.response_models import ResponseChecker, checked_responses, checking
from tests.fixtures.users import PASSWORD, login_api, sign_in
from tests.fixtures.worker import running_worker
from tests.transfers.helpers import finished

__all__ = ["checked_responses"]

# Operations with a response model that this test does not drive to a success, and why.
# Add one only with its reason, and check its responses where it is driven.
EXEMPT: dict[tuple[str, str], str] = {
    ("POST", "/admin/v1/tenants/{tenant_id}/isolate"): (
        "succeeds only on a Citus shard with an admin role that bypasses RLS: driven, "
        "and its responses checked, in tests/citus/test_isolation.py"
    ),
    **dict.fromkeys(
        (
            ("GET", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}"),
            ("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"),
        ),
        "a delivery exists once a worker matched an event: driven, and its responses "
        "checked, in tests/webhooks/test_delivery.py",
    ),
    ("POST", "/v1/opportunities/{opportunity_id}/fulfilment/retry"): (
        "succeeds only on a saga a worker failed: driven, and its responses checked, in "
        "tests/fulfilment/test_sagas.py"
    ),
    **dict.fromkeys(
        (
            ("POST", "/admin/v1/tenants/{tenant_id}/moves"),
            ("GET", "/admin/v1/moves/{move_id}"),
            ("POST", "/admin/v1/moves/{move_id}/cancel"),
            ("POST", "/admin/v1/moves/{move_id}/resume"),
        ),
        "a move runs only between shards with wal_level = logical: driven, and its "
        "responses checked, in tests/admin/test_moves.py",
    ),
}


def ok(resp: httpx.Response, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json() if resp.content else None


def refused(resp: httpx.Response, status: int, slug: str | None = None) -> None:
    """An expected error (its body is checked by the hook like any other)."""
    assert resp.status_code == status, resp.text
    if slug is not None:
        assert resp.json()["type"] == f"urn:meridian:problem:{slug}", resp.text


async def not_modified(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> str:
    """GET, then the conditional GET with its ETag (304); returns the ETag."""
    got = await client.get(path, headers=headers)
    ok(got)
    etag = got.headers["etag"]
    again = await client.get(path, headers={**headers, "If-None-Match": etag})
    assert again.status_code == 304, again.text
    return etag


async def create(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], headers: dict[str, str]
) -> Any:
    """POST with an Idempotency-Key, then its retry, which replays the stored response."""
    keyed = {**headers, "Idempotency-Key": uuid.uuid4().hex}
    made = ok(await client.post(path, json=body, headers=keyed), 201)
    again = await client.post(path, json=body, headers=keyed)
    replayed = ok(again, 201)
    assert again.headers.get("idempotent-replayed") == "true", again.headers
    # Onboarding and new clients show the client secret once only.
    hidden = {"client_secret": None}
    assert replayed in (
        made,
        {**made, **hidden},
        {**made, "client": {**made.get("client", {}), **hidden}},
    ), (made, replayed)
    return made


async def drive_records(client: httpx.AsyncClient, tenant: Tenant) -> dict[str, Any]:
    """Accounts, contacts, pipelines and stages, opportunities, activities, timelines."""
    h = tenant.headers
    made: dict[str, Any] = {}

    # Accounts: create, read, 304, list (two pages), change, 412, 404, 400.
    account = await create(
        client, "/v1/accounts", {"name": "Globex", "domain": "Globex.com", "tax_id": "DE 811"}, h
    )
    child = await create(
        client, "/v1/accounts", {"name": "Globex EU", "parent_id": account["id"]}, h
    )
    path = f"/v1/accounts/{account['id']}"
    got = await client.get(path, headers=h)
    assert ok(got) == account
    etag = got.headers["etag"]
    assert (await client.get(path, headers={**h, "If-None-Match": etag})).status_code == 304
    first = ok(await client.get("/v1/accounts", params={"limit": 1}, headers=h))
    assert first["next_cursor"]
    ok(await client.get("/v1/accounts", params={"cursor": first["next_cursor"]}, headers=h))
    account = ok(await client.patch(path, json={"domain": None}, headers={**h, "If-Match": etag}))
    stale = {**h, "If-Match": etag}
    refused(await client.patch(path, json={"name": "X"}, headers=stale), 412)
    refused(await client.get(f"/v1/accounts/{uuid.uuid4()}", headers=h), 404, "not-found")
    cycle = {"parent_id": child["id"]}  # the account would be its own grandparent
    refused(await client.patch(path, json=cycle, headers=h), 409, "conflict")
    refused(await client.get("/v1/accounts", params={"cursor": "nope"}, headers=h), 400)
    refused(await client.get("/v1/accounts", params={"sort": "tax_id"}, headers=h), 400)
    as_json = {**h, "Content-Type": "application/json"}
    refused(await client.post("/v1/accounts", content=b"{", headers=as_json), 400, "bad-request")
    refused(
        await client.post("/v1/accounts", content=b"name=x", headers=h),
        415,
        "unsupported-media-type",
    )
    refused(
        await client.post("/v1/accounts", content=b" " * 2_000_000, headers=as_json),
        413,
        "payload-too-large",
    )
    made["account"] = account

    # Contacts: create, duplicate (409 with duplicate_of), read, list, filter, change.
    contact_body = {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": f"ada-{uuid.uuid4().hex[:8]}@example.com",
        "phone": "+44 20 7946 0958",
        "tax_id": "811907980",
        "title": "Analyst",
        "account_id": account["id"],
    }
    contact = await create(client, "/v1/contacts", contact_body, h)
    refused(await client.post("/v1/contacts", json=contact_body, headers=h), 409, "duplicate")
    await not_modified(client, f"/v1/contacts/{contact['id']}", h)
    ok(await client.get("/v1/contacts", params={"email": contact_body["email"]}, headers=h))
    ok(await client.get("/v1/contacts", params={"account_id": account["id"]}, headers=h))
    contact = ok(
        await client.patch(f"/v1/contacts/{contact['id']}", json={"title": None}, headers=h)
    )
    refused(await client.post("/v1/contacts", json={"last_name": ""}, headers=h), 422)
    orphan = {"last_name": "Orphan", "account_id": str(uuid.uuid4())}
    refused(await client.post("/v1/contacts", json=orphan, headers=h), 422, "validation")
    made["contact"] = contact

    # Pipelines and stages.
    pipelines = ok(await client.get("/v1/pipelines", headers=h))
    default = next(p for p in pipelines["data"] if p["is_default"])
    stages = [
        {"name": "Open", "probability": "20.5"},
        {"name": "Won", "probability": 100, "kind": "won"},
        {"name": "Lost", "probability": 0, "kind": "lost"},
    ]
    pipeline = await create(client, "/v1/pipelines", {"name": "Renewals", "stages": stages}, h)
    base = f"/v1/pipelines/{pipeline['id']}"
    etag = await not_modified(client, base, h)
    pipeline = ok(await client.patch(base, json={"name": "Renewals 2027"}, headers=h))
    stale = {**h, "If-Match": etag}
    refused(await client.patch(base, json={"name": "Late"}, headers=stale), 412)
    tail = {"name": "Late", "probability": 1}
    refused(await client.post(f"{base}/stages", json=tail, headers=stale), 412)
    ok(await client.get(f"{base}/stages", headers=h))
    stage = await create(
        client, f"{base}/stages", {"name": "Quote", "probability": 55.5, "position": 1}, h
    )
    stage_etag = await not_modified(client, f"{base}/stages/{stage['id']}", h)
    ok(
        await client.post(
            f"{base}/stages", json={"name": "Tail", "probability": "1.25"}, headers=h
        ),
        201,
    )
    ok(await client.patch(f"{base}/stages/{stage['id']}", json={"position": 0}, headers=h))
    stale = {**h, "If-Match": stage_etag}
    refused(
        await client.patch(f"{base}/stages/{stage['id']}", json={"name": "Q"}, headers=stale), 412
    )
    refused(
        await client.patch(f"{base}/stages/{stage['id']}", json={"position": 9}, headers=h), 409
    )
    ok(await client.delete(f"{base}/stages/{stage['id']}", headers=h), 204)
    refused(await client.delete(f"/v1/pipelines/{default['id']}", headers=h), 409, "conflict")

    # Opportunities: in the default pipeline, and in the new one; a move; 409 on delete.
    opportunity = await create(
        client,
        "/v1/opportunities",
        {
            "account_id": account["id"],
            "name": "Big deal",
            "amount": 1250.5,
            "currency": "eur",
            "expected_close_date": "2027-03-31",
        },
        h,
    )
    assert opportunity["pipeline_id"] == default["id"]
    other = await create(
        client,
        "/v1/opportunities",
        {
            "account_id": account["id"],
            "name": "Renewal",
            "amount": "99.90",
            "currency": "USD",
            "pipeline_id": pipeline["id"],
            "stage_id": pipeline["stages"][0]["id"],
        },
        h,
    )
    await not_modified(client, f"/v1/opportunities/{opportunity['id']}", h)
    move = {"pipeline_id": pipeline["id"]}  # a new pipeline needs a stage of it
    refused(await client.patch(f"/v1/opportunities/{opportunity['id']}", json=move, headers=h), 422)
    ok(await client.get("/v1/opportunities", params={"sort": "-amount"}, headers=h))
    dates = {"close_after": "2027-01-01", "close_before": "2027-12-31"}
    ok(await client.get("/v1/opportunities", params=dates, headers=h))
    opportunity = ok(
        await client.patch(
            f"/v1/opportunities/{opportunity['id']}",
            json={"stage_id": default["stages"][1]["id"], "amount": 2000},
            headers=h,
        )
    )
    refused(await client.delete(base, headers=h), 409)  # opportunities use it
    made["opportunity"] = opportunity

    # Activities and the three timelines.
    activity = await create(
        client,
        "/v1/activities",
        {
            "type": "call",
            "subject": "Intro call",
            "body": "Went well.",
            "occurred_at": "2026-11-02T09:30:00+01:00",
            "contact_id": contact["id"],
            "opportunity_id": opportunity["id"],
        },
        h,
    )
    got = await client.get(f"/v1/activities/{activity['id']}", headers=h)
    ok(got)
    conditional = {**h, "If-None-Match": got.headers["etag"]}
    assert (
        await client.get(f"/v1/activities/{activity['id']}", headers=conditional)
    ).status_code == 304
    ok(await client.get("/v1/activities", params={"type": "call"}, headers=h))
    await create(
        client,
        "/v1/activities",
        {
            "type": "note",
            "subject": "Memo",
            "occurred_at": "2026-11-03T10:00:00Z",
            "account_id": account["id"],
        },
        h,
    )
    for timeline in (
        f"/v1/contacts/{contact['id']}/timeline",
        f"/v1/accounts/{account['id']}/timeline",
        f"/v1/opportunities/{opportunity['id']}/timeline",
    ):
        ok(await client.get(timeline, headers=h))
    page = ok(
        await client.get(f"/v1/accounts/{account['id']}/timeline", params={"limit": 1}, headers=h)
    )
    assert page["next_cursor"], page
    ok(
        await client.get(
            f"/v1/accounts/{account['id']}/timeline",
            params={"cursor": page["next_cursor"]},
            headers=h,
        )
    )

    # Fulfilment: the steps (empty, 304, replaced, 412) and an opportunity's sagas.
    await not_modified(client, "/v1/fulfilment/steps", h)
    step = {"method": "POST", "url": "https://erp.example.com/invoices"}
    steps = {"steps": [{"name": "finance", "action": step, "compensation": step}]}
    ok(await client.put("/v1/fulfilment/steps", json=steps, headers={**h, "If-Match": '"0"'}))
    refused(
        await client.put("/v1/fulfilment/steps", json=steps, headers={**h, "If-Match": '"0"'}),
        412,
    )
    ok(await client.get(f"/v1/opportunities/{opportunity['id']}/fulfilment", headers=h))
    refused(
        await client.post(f"/v1/opportunities/{opportunity['id']}/fulfilment/retry", headers=h),
        409,
        "conflict",
    )

    # Webhooks: subscribe (the secret once), read, list, change, rotate, replay, refuse.
    hook = await create(
        client,
        "/v1/webhooks",
        {"url": "https://hooks.example.com/meridian", "event_types": ["account.*"]},
        h,
    )
    hook_path = f"/v1/webhooks/{hook['id']}"
    got = await client.get(hook_path, headers=h)
    ok(got)
    ok(await client.get("/v1/webhooks", headers=h))
    ok(
        await client.patch(
            hook_path,
            json={"filter": {"name": "Globex"}},
            headers={**h, "If-Match": got.headers["etag"]},
        )
    )
    ok(await client.post(f"{hook_path}/rotate-secret", headers=h))
    ok(await client.get(f"{hook_path}/deliveries", headers=h))
    now = datetime.now(UTC)
    window = {"since": (now - timedelta(hours=1)).isoformat(), "until": now.isoformat()}
    ok(await client.post(f"{hook_path}/replay", json=window, headers=h), 202)
    past = {"since": (now - timedelta(days=400)).isoformat(), "until": now.isoformat()}
    refused(await client.post(f"{hook_path}/replay", json=past, headers=h), 410, "gone")
    refused(
        await client.post("/v1/webhooks", json={"url": "ftp://x", "event_types": ["*"]}, headers=h),
        422,
    )

    # Interaction summaries (kept by the worker, which does not run here: empty ones).
    for record in (
        f"/v1/contacts/{contact['id']}",
        f"/v1/accounts/{account['id']}",
        f"/v1/opportunities/{opportunity['id']}",
    ):
        ok(await client.get(f"{record}/interactions", headers=h))
    ok(await client.get("/v1/interactions", params={"kind": "account"}, headers=h))

    # The tenant's quotas and what it uses of them.
    ok(await client.get("/v1/quotas", headers=h))
    # The tenant's event log: a page, the next, a type filter, a cursor past retention.
    events = ok(await client.get("/v1/events", params={"limit": 2}, headers=h))
    assert events["next_cursor"], events
    ok(await client.get("/v1/events", params={"after": events["next_cursor"]}, headers=h))
    ok(await client.get("/v1/events", params={"type": "account.*"}, headers=h))
    refused(await client.get("/v1/events", params={"type": "nope"}, headers=h), 422)

    # Each kind's field history, a page of one field, and the audit trail.
    for plural, record in (
        ("contacts", contact),
        ("accounts", account),
        ("opportunities", opportunity),
        ("activities", activity),
    ):
        ok(await client.get(f"/v1/{plural}/{record['id']}/history", headers=h))
    one = {"order": "asc", "limit": 1, "field": "name"}
    ok(await client.get(f"/v1/accounts/{account['id']}/history", params=one, headers=h))
    history = f"/v1/contacts/{contact['id']}/history"
    refused(await client.get(history, params={"field": "nope"}, headers=h), 422)
    ok(await client.get("/v1/audit", params={"type": "user.*,role.*", "limit": 2}, headers=h))
    refused(await client.get("/v1/audit", params={"type": "contact.updated"}, headers=h), 422)

    # Every list again: the second answer may come from the cache.
    for listing in (
        "/v1/accounts",
        "/v1/contacts",
        "/v1/opportunities",
        "/v1/activities",
        "/v1/pipelines",
    ):
        ok(await client.get(listing, headers=h))
        ok(await client.get(listing, headers=h))
    refused(await client.delete(f"/v1/accounts/{account['id']}", headers=h), 409, "conflict")

    made |= await drive_leads_and_cases(client, h, contact)
    await drive_search(client, h, made)
    await drive_batches(client, h, made)
    await drive_merges(client, h)

    # Deletions, last: the other opportunity, then its pipeline, a child account, a contact.
    ok(await client.delete(f"/v1/opportunities/{other['id']}", headers=h), 204)
    ok(await client.delete(base, headers=h), 204)
    ok(await client.delete(f"/v1/accounts/{child['id']}", headers=h), 204)
    spare = ok(await client.post("/v1/contacts", json={"last_name": "Spare"}, headers=h), 201)
    ok(await client.delete(f"/v1/contacts/{spare['id']}", headers=h), 204)
    return made


async def drive_batches(client: httpx.AsyncClient, h: dict[str, str], made: dict[str, Any]) -> None:
    """Each kind's batch: a create, an update, an upsert, a stale If-Match and an invalid
    body in one request (their records and problems checked against the results' model),
    then replayed by its Idempotency-Key; a batch refused whole."""
    batches = {
        "account": ("accounts", {"name": "Batched"}, {"name": "Batched again"}),
        "contact": (
            "contacts",
            {"last_name": "Batched", "email": "b@batch.example"},
            {"title": "B"},
        ),
        "opportunity": (
            "opportunities",
            {"name": "Batched", "currency": "USD", "account_id": made["account"]["id"]},
            {"name": "Batched again"},
        ),
        "lead": ("leads", {"last_name": "Batched"}, {"company": "Batched"}),
        "case": ("cases", {"subject": "Batched"}, {"priority": "low"}),
    }
    for kind, (plural, new, change) in batches.items():
        record_id = made[kind]["id"]
        without_email = {k: v for k, v in new.items() if k != "email"}
        items = [
            {"op": "create", "body": new},
            {"op": "update", "id": record_id, "body": change},
            # (Without the email the create above has: a contact's would be a duplicate.)
            {"op": "upsert", "external_id": f"rm-{kind}", "body": without_email},
            {"op": "update", "id": record_id, "if_match": '"1"', "body": change},
            {"op": "create", "body": {}},
        ]
        keyed = {**h, "Idempotency-Key": f"rm-batch-{kind}"}
        path = f"/v1/{plural}/batch"
        first = ok(await client.post(path, json={"items": items}, headers=keyed))
        assert [r["status"] for r in first["results"]] == [201, 200, 201, 412, 422], first
        assert ok(await client.post(path, json={"items": items}, headers=keyed)) == first
    refused(await client.post("/v1/cases/batch", json={"items": []}, headers=h), 422)


async def drive_merges(client: httpx.AsyncClient, h: dict[str, str]) -> None:
    """Duplicate rules; each kind's duplicates and a dry run, merge (replayed by its
    Idempotency-Key) and its undo; the merges; a refused undo and merge."""
    rules = "/v1/duplicate-rules"
    body = {
        "kind": "lead",
        "name": "Same email",
        "conditions": [{"type": "exact", "field": "email"}],
    }
    rule = await create(client, rules, body, h)
    refused(await client.post(rules, json=body, headers=h), 409, "conflict")
    ok(await client.get(rules, params={"kind": "lead"}, headers=h))
    etag = await not_modified(client, f"{rules}/{rule['id']}", h)
    patch = {"conditions": [{"type": "fuzzy", "field": "company", "threshold": 0.6}]}
    ok(await client.patch(f"{rules}/{rule['id']}", json=patch, headers={**h, "If-Match": etag}))
    ok(await client.delete(f"{rules}/{rule['id']}", headers=h), 204)
    bodies = {
        "accounts": {"name": "Merge Me", "domain": "merge-me.example", "tax_id": "DE 811"},
        "contacts": {"last_name": "Merge", "email": "merge@me.example"},
        "leads": {"last_name": "Merge", "company": "Merge Me", "email": "merge@me.example"},
    }
    merge_ids = []
    for plural, record in bodies.items():
        first = ok(await client.post(f"/v1/{plural}", json=record, headers=h), 201)
        query = "?allow_duplicate=true" if plural == "contacts" else ""
        second = ok(await client.post(f"/v1/{plural}{query}", json=record, headers=h), 201)
        found = ok(await client.get(f"/v1/{plural}/{first['id']}/duplicates", headers=h))
        assert [d["record"]["id"] for d in found["data"]] == [second["id"]], found
        merge = {"survivor_id": first["id"], "merged_ids": [second["id"]]}
        preview = await client.post(
            f"/v1/{plural}/merge", json={**merge, "dry_run": True}, headers=h
        )
        assert ok(preview)["fields"], preview.text
        done = await create(client, f"/v1/{plural}/merge", merge, h)
        merge_ids.append(done["merge_id"])
        refused(await client.post(f"/v1/{plural}/merge", json=merge, headers=h), 404)
    ok(await client.get("/v1/merges", params={"kind": "lead"}, headers=h))
    ok(await client.get(f"/v1/merges/{merge_ids[0]}", headers=h))
    for merge_id in merge_ids:
        ok(await client.post(f"/v1/merges/{merge_id}/undo", json={"force": False}, headers=h))
    refused(await client.post(f"/v1/merges/{merge_ids[0]}/undo", headers=h), 409, "conflict")
    refused(await client.post(f"/v1/merges/{uuid.uuid4()}/undo", headers=h), 404, "not-found")


async def drive_search(client: httpx.AsyncClient, h: dict[str, str], made: dict[str, Any]) -> None:
    """Global search: a ranked page and the next with the records, an exact email
    through its blind index; a cursor of another query, an unknown kind."""
    first = ok(await client.get("/v1/search", params={"q": "globex", "limit": 1}, headers=h))
    assert first["next_cursor"], first
    params = {"q": "globex", "cursor": first["next_cursor"], "include": "record"}
    ok(await client.get("/v1/search", params=params, headers=h))
    by_email = {"q": made["contact"]["email"], "include": "record"}
    assert ok(await client.get("/v1/search", params=by_email, headers=h))["data"], by_email
    other = {"q": "lovelace", "cursor": first["next_cursor"]}
    refused(await client.get("/v1/search", params=other, headers=h), 400, "invalid-cursor")
    refused(await client.get("/v1/search", params={"q": "x", "kinds": "deal"}, headers=h), 422)


async def drive_leads_and_cases(
    client: httpx.AsyncClient, h: dict[str, str], contact: dict[str, Any]
) -> dict[str, Any]:
    """Leads, their scoring rules and conversion; cases; their timelines and histories."""
    rules = "/v1/lead-scoring/rules"
    condition = {"type": "field", "field": "source", "op": "eq", "value": "web"}
    rule = await create(client, rules, {"name": "Web", "points": 5, "condition": condition}, h)
    refused(
        await client.post(
            rules, json={"name": "Web", "points": 1, "condition": condition}, headers=h
        ),
        409,
    )
    ok(await client.get(rules, headers=h))
    etag = await not_modified(client, f"{rules}/{rule['id']}", h)
    ok(
        await client.patch(
            f"{rules}/{rule['id']}", json={"points": 6}, headers={**h, "If-Match": etag}
        )
    )
    lead = await create(client, "/v1/leads", {"last_name": "Lead", "source": "web"}, h)
    assert lead["score"] == 6, lead
    path = f"/v1/leads/{lead['id']}"
    etag = await not_modified(client, path, h)
    ok(await client.patch(path, json={"company": "Leadco"}, headers={**h, "If-Match": etag}))
    ok(await client.get("/v1/leads", params={"sort": "-score"}, headers=h))
    ok(await client.get(f"{path}/timeline", headers=h))
    ok(await client.get(f"{path}/history", headers=h))
    spare = ok(await client.post("/v1/leads", json={"last_name": "Spare"}, headers=h), 201)
    converted = ok(await client.post(f"/v1/leads/{spare['id']}/convert", json={}, headers=h))
    ok(await client.post(f"/v1/leads/{spare['id']}/convert", json={}, headers=h))
    refused(
        await client.patch(f"/v1/leads/{spare['id']}", json={"title": "x"}, headers=h),
        409,
        "lead-converted",
    )
    assert converted["converted_now"] is True
    ok(await client.delete(f"{rules}/{rule['id']}", headers=h), 204)

    case = await create(client, "/v1/cases", {"subject": "Broken", "contact_id": contact["id"]}, h)
    path = f"/v1/cases/{case['id']}"
    etag = await not_modified(client, path, h)
    ok(await client.patch(path, json={"priority": "high"}, headers={**h, "If-Match": etag}))
    refused(await client.patch(path, json={"status": "closed"}, headers=h), 422)
    ok(await client.get("/v1/cases", params={"overdue": "false", "sort": "due_at"}, headers=h))
    ok(await client.get(f"{path}/timeline", headers=h))
    ok(await client.get(f"{path}/history", headers=h))
    # Custom fields: defined, used, filtered, archived, restored, purged; the schema.
    fields = "/v1/objects/contacts/fields"
    region = {"name": "region", "label": "Region", "type": "picklist"}
    made = await create(client, fields, {**region, "options": {"values": ["EMEA", "APAC"]}}, h)
    refused(
        await client.post(fields, json={**region, "options": {"values": ["X"]}}, headers=h), 409
    )
    refused(await client.post(fields, json={**region, "name": "r2"}, headers=h), 422)
    ok(await client.get(fields, headers=h))
    one = f"{fields}/{made['id']}"
    etag = await not_modified(client, one, h)
    grown = {"options": {"values": ["EMEA", "APAC", "LATAM"]}}
    ok(await client.patch(one, json=grown, headers={**h, "If-Match": etag}))
    tagged = await create(
        client, "/v1/contacts", {"last_name": "Custom", "custom": {"region": "EMEA"}}, h
    )
    refused(await client.patch(one, json={"options": {"values": ["APAC"]}}, headers=h), 409)
    ok(await client.get("/v1/contacts", params={"filter": "custom.region[eq]:EMEA"}, headers=h))
    ok(await client.get("/v1/objects/contacts/schema", headers=h))
    ok(await client.delete(one, headers=h), 204)
    ok(await client.post(f"{one}/restore", headers=h))
    ok(await client.delete(one, headers=h), 204)
    ok(await client.delete(one, params={"purge": "true"}, headers=h), 204)
    ok(await client.delete(f"/v1/contacts/{tagged['id']}", headers=h), 204)
    return {"lead": lead, "case": case}


async def drive_people(
    client: httpx.AsyncClient, login: httpx.AsyncClient, tenant: Tenant, made: dict[str, Any]
) -> None:
    """Users, roles, shares, and users' tokens (password grant, refresh, revocation)."""
    h = tenant.headers
    email = f"grace-{uuid.uuid4().hex[:8]}@example.com"
    manager = await create(
        client, "/v1/users", {"email": f"m-{email}", "name": "Manager", "role": "sales_manager"}, h
    )
    user = await create(
        client,
        "/v1/users",
        {
            "email": email,
            "name": "Grace",
            "role": "sales_rep",
            "manager_id": manager["id"],
            "password": PASSWORD,
        },
        h,
    )
    reader = await create(
        client,
        "/v1/users",
        {"email": f"r-{email}", "name": "Reader", "role": "read_only", "password": PASSWORD},
        h,
    )
    await not_modified(client, f"/v1/users/{user['id']}", h)
    ok(await client.get("/v1/users", params={"role": "sales_rep"}, headers=h))
    ok(await client.patch(f"/v1/users/{user['id']}", json={"name": "Grace H"}, headers=h))
    refused(await client.post("/v1/users", json={**manager, "id": None}, headers=h), 422)
    leaver = await create(
        client, "/v1/users", {"email": f"x-{email}", "name": "Leaver", "role": "support_agent"}, h
    )
    ok(await client.patch(f"/v1/users/{leaver['id']}", json={"active": False}, headers=h))
    loop = {"manager_id": user["id"]}  # the manager would report to her own report
    refused(await client.patch(f"/v1/users/{manager['id']}", json=loop, headers=h), 409)
    leaving = {"active": False}  # she still manages an active user
    refused(await client.patch(f"/v1/users/{manager['id']}", json=leaving, headers=h), 409)
    ok(await client.get("/v1/users", params={"active": "false"}, headers=h))
    ok(await client.get("/v1/users", params={"manager_id": manager["id"]}, headers=h))
    again = {"email": email, "name": "Twin", "role": "sales_rep"}
    refused(await client.post("/v1/users", json=again, headers=h), 409)

    # Roles: templates and a custom role, a template's permissions replaced and reset.
    ok(await client.get("/v1/roles", headers=h))
    role = await client.get("/v1/roles/sales_rep", headers=h)
    ok(role)
    conditional = {**h, "If-None-Match": role.headers["etag"]}
    assert (await client.get("/v1/roles/sales_rep", headers=conditional)).status_code == 304
    read = [{"object": "accounts", "action": "read"}]
    await create(
        client, "/v1/roles", {"name": "auditor", "inherits": "read_only", "permissions": read}, h
    )
    auditor = await client.get("/v1/roles/auditor", headers=h)
    ok(auditor)
    stale = {**h, "If-Match": auditor.headers["etag"]}
    ok(await client.patch("/v1/roles/auditor", json={"description": "Reads."}, headers=stale))
    refused(await client.patch("/v1/roles/auditor", json={"inherits": None}, headers=stale), 412)
    grants = {"permissions": [*read, {"object": "contacts", "action": "read"}]}
    ok(await client.put("/v1/roles/read_only/permissions", json=grants, headers=h))
    refused(await client.delete("/v1/roles/sales_rep", headers=h), 409)
    ok(await client.delete("/v1/roles/auditor", headers=h), 204)

    # Shares of each kind of record, with a user and with a team.
    for plural, kind in (
        ("accounts", "account"),
        ("contacts", "contact"),
        ("opportunities", "opportunity"),
        ("leads", "lead"),
        ("cases", "case"),
    ):
        path = f"/v1/{plural}/{made[kind]['id']}/shares"
        share = await create(client, path, {"user_id": user["id"]}, h)
        ok(await client.post(path, json={"team_id": manager["id"]}, headers=h), 201)
        refused(await client.post(path, json={"user_id": user["id"]}, headers=h), 409)
        ok(await client.get(path, headers=h))
        ok(await client.delete(f"{path}/{share['id']}", headers=h), 204)
    contact_path = f"/v1/contacts/{made['contact']['id']}"
    ok(await client.post(f"{contact_path}/shares", json={"user_id": reader["id"]}, headers=h), 201)

    # Users sign in (password grant): a reader sees the contact masked and may not write
    # (403 naming the permission); the rep refreshes, revokes, is revoked altogether.
    client_auth = (tenant.client_id, tenant.client_secret)
    as_reader = await sign_in(login, tenant, f"r-{email}")
    masked = ok(await client.get(contact_path, headers=as_reader))
    assert masked["email"] != made["contact"]["email"], masked
    ok(await client.get("/v1/contacts", headers=as_reader))
    ok(await client.get("/v1/accounts", headers=as_reader))
    refused(await client.get(f"{contact_path}/shares", headers=as_reader), 403, "forbidden")
    refused(await client.post("/v1/accounts", json={"name": "No"}, headers=as_reader), 403)
    form = {"grant_type": "password", "username": email, "password": PASSWORD}
    signed = ok(
        await login.post("/oauth/token", data={**form, "tenant": tenant.slug}, auth=client_auth)
    )
    as_user = {"Authorization": f"Bearer {signed['access_token']}"}
    ok(await client.get(contact_path, headers=as_user))
    mine = await create(
        client, "/v1/contacts", {"last_name": "Mine", "email": f"mine-{email}"}, as_user
    )
    assert mine["owner_id"] == user["id"]
    ok(await client.get("/v1/contacts", headers=as_user))
    renew = {"grant_type": "refresh_token", "refresh_token": signed["refresh_token"]}
    refreshed = ok(await login.post("/oauth/token", data=renew, auth=client_auth))
    revoke = {"token": refreshed["refresh_token"], "token_type_hint": "refresh_token"}
    ok(await login.post("/oauth/revoke", data=revoke, auth=client_auth))
    renew = {"grant_type": "refresh_token", "refresh_token": refreshed["refresh_token"]}
    assert (await login.post("/oauth/token", data=renew, auth=client_auth)).status_code == 400
    ok(await client.delete("/v1/roles/read_only/permissions", headers=h))
    ok(await client.post(f"/v1/users/{user['id']}/revoke-tokens", headers=h))
    refused(await client.post(f"/v1/users/{uuid.uuid4()}/revoke-tokens", headers=h), 404)
    refused(await client.get("/v1/accounts", headers=as_user), 401, "unauthorized")


async def drive_transfers(client: httpx.AsyncClient, settings: Settings, tenant: Tenant) -> None:
    """Exports and imports: made (and replayed by their Idempotency-Key), run by a worker,
    read, listed, an import cancelled, the refusals. The downloads are files, not JSON:
    fetched outside the checker (their refusals, problem+json, through it)."""
    h = tenant.headers
    keyed = {**h, "Idempotency-Key": uuid.uuid4().hex}
    body = {"object": "contacts", "format": "csv", "filter": "last_name[starts]:L"}
    export = ok(await client.post("/v1/exports", json=body, headers=keyed), 202)
    ok(await client.post("/v1/exports", json=body, headers=keyed), 202)
    unknown = {**body, "fields": ["custom.nope"]}
    refused(await client.post("/v1/exports", json=unknown, headers=h), 422, "validation")

    def parts(rows: bytes) -> list[Any]:
        options = b'{"object": "leads", "mapping": {"Name": "last_name", "Mail": "email"}}'
        return [
            ("options", (None, options, "application/json")),
            ("file", ("leads.csv", b"Name,Mail\n" + rows, "text/csv")),
        ]

    keyed = {**h, "Idempotency-Key": uuid.uuid4().hex}
    rows = b"Ada,ada@example.com\nNo mail,not an email\n"
    made = ok(await client.post("/v1/imports", files=parts(rows), headers=keyed), 202)
    ok(await client.post("/v1/imports", files=parts(rows), headers=keyed), 202)
    queued = ok(await client.post("/v1/imports", files=parts(b"Later,\n"), headers=h), 202)
    ok(await client.post(f"/v1/imports/{queued['id']}/cancel", headers=h))
    refused(await client.post("/v1/imports", content=rows, headers=h), 415)
    async with running_worker(settings):
        export = await finished(client, h, "exports", export["id"])
        made = await finished(client, h, "imports", made["id"])
    ok(await client.get("/v1/exports", headers=h))
    ok(await client.get("/v1/imports", params={"limit": 1}, headers=h))
    refused(await client.post(f"/v1/imports/{made['id']}/cancel", headers=h), 409, "conflict")
    transport = httpx.ASGITransport(app=client.app)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as plain:
        assert (await plain.get(export["download_url"])).status_code == 200
        assert (await plain.get(made["errors_url"])).status_code == 200
    expired = export["download_url"].replace("expires=", "expires=1")
    refused(await client.get(expired), 403, "forbidden")


async def drive_platform(
    client: httpx.AsyncClient, admin_headers: dict[str, str], tenant: Tenant
) -> None:
    """Tokens, discovery, health, and the platform-admin API."""
    reading = await token_for(client, tenant.client_id, tenant.client_secret, scope="crm:read")
    write = {"Authorization": f"Bearer {reading}"}
    refused(
        await client.post("/v1/accounts", json={"name": "No"}, headers=write),
        403,
        "insufficient-scope",
    )
    # Narrowed to nothing (a tenant client holds no platform scope): the empty scope is
    # still stated (RFC 6749 §5.1: it differs from the request).
    narrowed = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "platform:admin"},
        auth=(tenant.client_id, tenant.client_secret),
    )
    assert ok(narrowed)["scope"] == ""
    wrong_secret = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(tenant.client_id, "x")
    )
    assert wrong_secret.status_code == 401, wrong_secret.text
    not_a_form = await client.post("/oauth/token", json={"grant_type": "client_credentials"})
    assert not_a_form.status_code == 400, not_a_form.text
    ok(await client.get("/.well-known/jwks.json"))
    ok(await client.get("/.well-known/oauth-authorization-server"))
    ok(await client.get("/healthz"))
    ok(await client.get("/readyz"))
    refused(await client.get("/v1/accounts"), 401, "unauthorized")
    refused(await client.get("/admin/v1/shards", headers=tenant.headers), 403)

    a = admin_headers
    ok(await client.get(f"/admin/v1/tenants/{tenant.id}", headers=a))
    ok(await client.get(f"/admin/v1/tenants/{tenant.id}/limits", headers=a))
    ok(await client.put(f"/admin/v1/tenants/{tenant.id}/limits", json={}, headers=a))
    ok(await client.get(f"/admin/v1/tenants/{tenant.id}/quotas", headers=a))
    ok(await client.get("/admin/v1/shards", headers=a))
    ok(await client.get("/admin/v1/moves", params={"tenant_id": tenant.id}, headers=a))
    refused(await client.get(f"/admin/v1/moves/{uuid.uuid4()}", headers=a), 404)
    on_its_shard = {"target_shard_id": tenant.shard_id}
    moves = f"/admin/v1/tenants/{tenant.id}/moves"
    refused(await client.post(moves, json=on_its_shard, headers=a), 409, "conflict")
    await create(client, f"/admin/v1/tenants/{tenant.id}/clients", {"scope": "crm:read"}, a)
    ok(await client.post(f"/admin/v1/tenants/{tenant.id}/revoke-tokens", headers=a))

    # A tenant of its own to suspend, resume and delete.
    slug = f"rm-{uuid.uuid4().hex[:12]}"
    body = {"slug": slug, "name": "Doomed", "region": "eu"}
    doomed = await create(client, "/admin/v1/tenants", body, a)
    refused(await client.post("/admin/v1/tenants", json=body, headers=a), 409)
    named = {"slug": f"rn-{uuid.uuid4().hex[:12]}", "name": "Named", "shard_id": "eu-1"}
    assert (await create(client, "/admin/v1/tenants", named, a))["placement"] == "shard"
    page = ok(await client.get("/admin/v1/tenants", params={"limit": 1}, headers=a))
    assert page["next_cursor"], page  # two tenants at least: this one and the test's
    params = {"cursor": page["next_cursor"], "region": "us", "status": "active"}
    ok(await client.get("/admin/v1/tenants", params=params, headers=a))
    path = f"/admin/v1/tenants/{doomed['id']}"
    doomed_token = await token_for(
        client, doomed["client"]["client_id"], doomed["client"]["client_secret"]
    )
    ok(await client.patch(path, json={"event_retention_days": 90}, headers=a))
    refused(await client.patch(path, json={"event_retention_days": 0}, headers=a), 422)
    ok(await client.post(f"{path}/suspend", headers=a))
    as_doomed = {"Authorization": f"Bearer {doomed_token}"}
    refused(await client.get("/v1/accounts", headers=as_doomed), 403, "tenant-suspended")
    suspended = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(doomed["client"]["client_id"], doomed["client"]["client_secret"]),
    )
    assert suspended.status_code == 400, suspended.text  # unauthorized_client
    ok(await client.post(f"{path}/resume", headers=a))
    ok(await client.delete(path, headers=a))
    ok(await client.delete(path, headers=a))  # idempotent
    ok(await client.get("/admin/v1/tenants", params={"status": "deleted"}, headers=a))
    refused(await client.post(f"{path}/resume", headers=a), 409)
    refused(await client.get(f"/admin/v1/tenants/{uuid.uuid4()}", headers=a), 404)


async def test_every_response_matches_its_declared_model(
    app_client: httpx.AsyncClient,
    admin_token: AdminToken,
    settings: Settings,
    platform: Platform,
    checked_responses: ResponseChecker,
) -> None:
    admin_headers = await admin_token.headers()
    tenant = await platform.onboard(slug=f"rm-{uuid.uuid4().hex[:12]}")
    # User tokens come from an instance with the password grant on (valid on both).
    async with login_api(settings) as login:
        with checking(login) as login_checker:
            made = await drive_records(app_client, tenant)
            await drive_people(app_client, login, tenant, made)
            await drive_transfers(app_client, settings, tenant)
            await drive_platform(app_client, admin_headers, tenant)
    assert checked_responses.violations == []
    assert login_checker.violations == []

    exercised = checked_responses.exercised | login_checker.exercised
    missing = checked_responses.operations_with_models() - exercised - set(EXEMPT)
    assert not missing, f"never answered with a success here: {sorted(missing)}"


async def test_the_checker_catches_what_the_route_does_not_declare(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    """The harness can fail: an undeclared member, a mistyped or missing field, an
    undocumented status, a problem type the operation does not list, a missing ETag, a
    header the status does not declare."""
    checker = ResponseChecker(app_client.app)  # type: ignore[attr-defined]
    resp = await app_client.post(
        "/v1/contacts", json={"last_name": "Probe"}, headers=tenant.headers
    )
    assert checker.check(resp) == []
    contact = resp.json()
    kept = {k: v for k, v in resp.headers.items() if k not in {"content-length", "content-type"}}

    def check(
        status: int,
        body: dict[str, Any],
        media: str = "application/json",
        headers: dict[str, str] = kept,
    ) -> list[str]:
        fake = httpx.Response(
            status, json=body, headers={**headers, "content-type": media}, request=resp.request
        )
        return checker.check(fake)

    found = check(201, {**contact, "tenant_id": tenant.id})
    assert found == ["$.tenant_id is not a field of ContactRead"], found
    found = check(201, {**contact, "version": str(contact["version"])})
    assert any("version" in f and "integer" in f for f in found), found
    found = check(201, {k: v for k, v in contact.items() if k != "title"})
    assert any("title" in f for f in found), found
    found = check(201, {**contact, "created_at": "2026-12-05T16:00:00"})
    assert any("created_at" in f and "date-time" in f for f in found), found
    found = check(200, contact)
    assert len(found) == 1, found
    assert "status 200 is not documented" in found[0], found
    found = check(201, contact, headers={k: v for k, v in kept.items() if k != "etag"})
    assert found == ["required header ETag is missing"], found
    found = check(201, contact, headers={**kept, "retry-after": "1"})
    assert found == ["header Retry-After is sent but not declared for this status"], found
    problem = {"type": "urn:meridian:problem:not-found", "title": "Not found", "status": 409}
    found = check(409, problem, "application/problem+json")
    assert any("not-found" in f for f in found), found
