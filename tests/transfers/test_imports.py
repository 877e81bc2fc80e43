"""Imports: an uploaded CSV or JSON Lines file written by the worker through each
kind's batch flow (its services' rules, custom fields, duplicates, events), with a
column mapping, a match rule, a dry run, a per-row error report downloaded by a signed
URL; cancelling; the upload's refusals; the tenant boundary; the audit trail."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson
import pytest

from meridian.settings import Settings
from tests.fixtures.api import Tenant
from tests.fixtures.databases import raw_dsn
from tests.fixtures.problems import assert_problem
from tests.fixtures.users import PASSWORD, new_user, sign_in
from tests.transfers.conftest import CHUNK_ROWS
from tests.transfers.helpers import csv_bytes, csv_rows, every, finished, imported, upload

pytestmark = pytest.mark.usefixtures("worker")
Headers = dict[str, str]


async def field(client: httpx.AsyncClient, h: Headers, obj: str, **body: Any) -> None:
    resp = await client.post(f"/v1/objects/{obj}/fields", json=body, headers=h)
    assert resp.status_code == 201, resp.text


def tag() -> str:
    return uuid.uuid4().hex[:8]


async def test_a_csv_import_with_a_mapping_and_custom_fields(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    await field(app_client, h, "contacts", name="company_size", label="Size", type="number")
    await field(app_client, h, "contacts", name="vip", label="VIP", type="boolean")
    t = tag()
    rows = [
        [
            f"Ada-{i}",
            f"Lovelace {i}",
            f"ada{i}-{t}@Example.com",
            str(10 * i),
            "yes" if i % 2 else "no",
            "ignored",
        ]
        for i in range(2 * CHUNK_ROWS + 3)
    ]
    data = csv_bytes(["First", "Last", "Email Address", "Company size", "VIP", "Notes"], rows)
    mapping = {
        "First": "first_name",
        "Last": "last_name",
        "Email Address": "email",
        "Company size": "custom.company_size",
        "VIP": "custom.vip",
    }
    done = await imported(app_client, h, {"object": "contacts", "mapping": mapping}, data)
    assert done["state"] == "done", done
    n = len(rows)
    assert (
        done["rows_done"],
        done["created"],
        done["updated"],
        done["skipped"],
        done["failed"],
    ) == (n, n, 0, 0, 0)
    assert done["bytes_done"] == done["bytes_total"] == len(data)
    assert done["errors_url"] is None
    made = await every(app_client, h, "/v1/contacts", filter="last_name[starts]:Lovelace")
    assert len(made) == n
    by_email = {c["email"]: c for c in made}
    first = by_email[f"ada1-{t}@example.com"]  # the API's own rules: lower-cased
    assert (first["first_name"], first["custom"]) == ("Ada-1", {"company_size": 10, "vip": True})
    assert by_email[f"ada0-{t}@example.com"]["custom"] == {"company_size": 0, "vip": False}
    # Written as the requester (the tenant's client): its events name it.
    resp = await app_client.get(f"/v1/contacts/{first['id']}/history", headers=h)
    assert resp.json()["data"][-1]["actor"]["type"] == "client"
    # The search index follows the worker's writes as the API's.
    found = await app_client.get("/v1/search", params={"q": "Lovelace 1"}, headers=h)
    assert found.status_code == 200, found.text
    assert first["id"] in {r["id"] for r in found.json()["data"]}


async def test_a_json_lines_import_by_field_names(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    await field(
        app_client,
        h,
        "accounts",
        name="tier",
        label="Tier",
        type="picklist",
        options={"values": ["gold", "silver"]},
    )
    lines = [
        {"name": "Acme", "domain": "ACME.example", "custom": {"tier": "gold"}, "id": "ignored"},
        {"name": "Globex", "custom.tier": "silver", "external_id": "erp-1"},
        {"domain": "nameless.example"},
    ]
    data = b"\n".join(orjson.dumps(line) for line in lines) + b"\n\n"
    done = await imported(
        app_client,
        h,
        {"object": "accounts"},
        data,
        filename="accounts.jsonl",
        media_type="application/x-ndjson",
    )
    assert (done["format"], done["created"], done["failed"]) == ("jsonl", 2, 1)
    accounts = {a["name"]: a for a in await every(app_client, h, "/v1/accounts")}
    assert accounts["Acme"]["domain"] == "acme.example"
    assert accounts["Acme"]["custom"] == {"tier": "gold"}
    assert accounts["Globex"]["custom"] == {"tier": "silver"}
    assert accounts["Globex"]["external_id"] == "erp-1"
    report = csv_rows((await app_client.get(done["errors_url"])).content)
    assert [(r["row"], r["line"], r["field"], r["type"]) for r in report] == [
        ("3", "3", "name", "missing")
    ]


async def test_a_dry_run_writes_nothing_and_says_what_would_happen(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    resp = await app_client.post(
        "/v1/leads", json={"last_name": "Known", "external_id": "crm-1"}, headers=h
    )
    assert resp.status_code == 201, resp.text
    before = await every(app_client, h, "/v1/leads")
    events = (await app_client.get("/v1/events", params={"type": "lead.*"}, headers=h)).json()
    data = csv_bytes(
        ["external_id", "last_name", "email"],
        [["crm-1", "Known again", ""], ["crm-2", "New", "x@y.example"], ["crm-3", "", "bad"]],
    )
    options = {"object": "leads", "on_match": "update", "dry_run": True}
    done = await imported(app_client, h, options, data)
    assert done["dry_run"] is True
    assert (done["created"], done["updated"], done["failed"]) == (1, 1, 1)
    assert await every(app_client, h, "/v1/leads") == before
    after = (await app_client.get("/v1/events", params={"type": "lead.*"}, headers=h)).json()
    assert after["last_seq"] == events["last_seq"]
    report = csv_rows((await app_client.get(done["errors_url"])).content)
    assert {(r["row"], r["column"], r["field"]) for r in report} == {
        ("3", "last_name", "last_name"),
        ("3", "email", "email"),
    }


async def test_rows_that_match_by_external_id_are_skipped_or_updated(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    t = tag()
    resp = await app_client.post(
        "/v1/cases", json={"subject": "Old", "external_id": f"{t}-1"}, headers=h
    )
    assert resp.status_code == 201, resp.text
    existing = resp.json()
    data = csv_bytes(
        ["id", "subject", "priority"],
        [
            [f"{t}-1", "Changed", "high"],
            [f"{t}-2", "New", "low"],
            [f"{t}-2", "Again", "low"],
            ["", "No id", "low"],
        ],
    )
    mapping = {"id": "external_id", "subject": "subject", "priority": "priority"}
    skipped = await imported(
        app_client, h, {"object": "cases", "mapping": mapping, "on_match": "skip"}, data
    )
    assert (skipped["created"], skipped["skipped"], skipped["updated"]) == (2, 2, 0)
    case = (await app_client.get(f"/v1/cases/{existing['id']}", headers=h)).json()
    assert case["subject"] == "Old"
    updated = await imported(
        app_client, h, {"object": "cases", "mapping": mapping, "on_match": "update"}, data
    )
    assert (updated["created"], updated["updated"], updated["failed"]) == (1, 3, 0)
    case = (await app_client.get(f"/v1/cases/{existing['id']}", headers=h)).json()
    assert (case["subject"], case["priority"]) == ("Changed", "high")
    listed = await every(app_client, h, "/v1/cases", filter=f"external_id[eq]:{t}-2")
    assert [c["subject"] for c in listed] == ["Again"]  # one record, updated in turn


async def test_contacts_match_by_email_through_the_blind_index(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    t = tag()
    resp = await app_client.post(
        "/v1/contacts", json={"last_name": "Hopper", "email": f"grace-{t}@navy.example"}, headers=h
    )
    assert resp.status_code == 201, resp.text
    grace = resp.json()
    data = csv_bytes(
        ["email", "last_name", "title"],
        [
            [f"  GRACE-{t}@Navy.example ", "Hopper", "Rear Admiral"],
            [f"alan-{t}@bletchley.example", "Turing", ""],
        ],
    )
    base = {"object": "contacts", "match_by": "email"}
    done = await imported(app_client, h, {**base, "on_match": "skip"}, data)
    assert (done["created"], done["skipped"]) == (1, 1)
    done = await imported(app_client, h, {**base, "on_match": "update"}, data)
    assert (done["created"], done["updated"]) == (0, 2)
    after = (await app_client.get(f"/v1/contacts/{grace['id']}", headers=h)).json()
    assert after["title"] == "Rear Admiral"
    assert len(await every(app_client, h, "/v1/contacts", email=f"alan-{t}@bletchley.example")) == 1
    # Without a match rule, the contacts' own duplicate rule holds: 409 per row.
    done = await imported(app_client, h, {"object": "contacts"}, data)
    assert (done["created"], done["failed"]) == (0, 2)
    report = csv_rows((await app_client.get(done["errors_url"])).content)
    assert {r["type"] for r in report} == {"duplicate"}
    assert grace["id"] in report[0]["detail"]
    done = await imported(app_client, h, {"object": "contacts", "allow_duplicate": True}, data)
    assert done["created"] == 2


async def test_bad_rows_are_reported_and_the_rest_imported(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    account = (await app_client.post("/v1/accounts", json={"name": "Host"}, headers=h)).json()
    rows: list[list[str]] = [
        [f"Deal {i}", "100", "USD", account["id"]] for i in range(CHUNK_ROWS + 5)
    ]
    rows[3] = ["Deal 3", "lots", "USD", account["id"]]  # not an amount
    rows[CHUNK_ROWS + 1] = ["", "5", "XXX", account["id"]]  # no name, no such currency
    rows[CHUNK_ROWS + 2] = ["Deal x", "5", "USD", str(uuid.uuid4())]  # no such account
    data = csv_bytes(["name", "amount", "currency", "account_id"], rows)
    text = data.decode().replace("Deal 7,", '"Deal\n7",', 1).encode()  # a field on two lines
    done = await imported(app_client, h, {"object": "opportunities"}, text)
    assert (done["created"], done["failed"], done["rows_done"]) == (len(rows) - 3, 3, len(rows))
    report = csv_rows((await app_client.get(done["errors_url"])).content)
    assert [(r["row"], r["field"]) for r in report] == [
        ("4", "amount"),
        (str(CHUNK_ROWS + 2), "name"),
        (str(CHUNK_ROWS + 2), "currency"),
        (str(CHUNK_ROWS + 3), "account_id"),
    ]
    # Lines count the header and the line break inside a field.
    assert report[0]["line"] == "5"
    assert report[1]["line"] == str(CHUNK_ROWS + 4)
    names = {o["name"] for o in await every(app_client, h, "/v1/opportunities")}
    assert "Deal\n7" in names


async def test_an_import_can_be_cancelled(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    h = tenant.headers
    data = csv_bytes(["last_name"], [[f"Lead {i}"] for i in range(20 * CHUNK_ROWS)])
    resp = await upload(app_client, h, {"object": "leads"}, data)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    cancelled = await app_client.post(f"/v1/imports/{job_id}/cancel", headers=h)
    assert cancelled.status_code == 200, cancelled.text
    job = cancelled.json()
    assert job["state"] == "cancelled"
    done = await finished(app_client, h, "imports", job_id)
    assert done == {
        **job,
        "errors_url": done["errors_url"],
        "errors_expires_at": done["errors_expires_at"],
    }
    # What was committed before the cancellation, and nothing after it.
    leads = await every(app_client, h, "/v1/leads", filter="last_name[starts]:Lead ")
    assert len(leads) == job["created"] < len(data.splitlines()) - 1
    again = await app_client.post(f"/v1/imports/{job_id}/cancel", headers=h)
    assert again.json()["state"] == "cancelled"
    over = await imported(app_client, h, {"object": "leads"}, csv_bytes(["last_name"], [["X"]]))
    resp = await app_client.post(f"/v1/imports/{over['id']}/cancel", headers=h)
    assert_problem(resp, 409, "conflict")


async def _uploads(settings: Settings, tenant: Tenant) -> int:
    """How many uploads the tenant's shard holds."""
    shard = next(s.dsn.rsplit("/", 1)[1] for s in settings.shards if s.id == tenant.shard_id)
    conn = await asyncpg.connect(raw_dsn(shard))
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM data_file WHERE tenant_id = $1 AND purpose = 'upload'",
            uuid.UUID(tenant.id),
        )
    finally:
        await conn.close()
    return count


async def test_the_upload_is_refused_before_anything_is_stored(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    h = tenant.headers
    data = csv_bytes(["last_name"], [["X"]])
    resp = await upload(app_client, h, {"object": "contacts", "mapping": {"x": "nope"}}, data)
    body = assert_problem(resp, 422, "validation")
    assert body["errors"][0]["loc"][:2] == ["options", "contacts"]
    resp = await upload(
        app_client, h, {"object": "contacts", "mapping": {"x": "custom.nope"}}, data
    )
    body = assert_problem(resp, 422, "validation")
    assert body["errors"][0]["type"] == "not_found"
    resp = await upload(app_client, h, {"object": "cases", "match_by": "email"}, data)
    assert_problem(resp, 422, "validation")
    resp = await upload(
        app_client,
        h,
        {"object": "contacts"},
        data,
        filename="x",
        media_type="application/octet-stream",
    )
    assert_problem(resp, 422, "validation")
    # Options after the file: taken all the same; refused, the file stored is deleted.
    late = [
        ("file", ("x.csv", data, "text/csv")),
        ("options", (None, b'{"object": "leads"}', "application/json")),
    ]
    resp = await app_client.post("/v1/imports", files=late, headers=h)
    assert resp.status_code == 202, resp.text
    uploads = await _uploads(settings, tenant)
    late[1] = ("options", (None, b'{"object": "leads", "oops": 1}', "application/json"))
    resp = await app_client.post("/v1/imports", files=late, headers=h)
    body = assert_problem(resp, 422, "validation")
    assert body["errors"][0]["loc"] == ["options", "leads", "oops"]
    assert await _uploads(settings, tenant) == uploads
    resp = await app_client.post(
        "/v1/imports", content=data, headers={**h, "Content-Type": "text/csv"}
    )
    assert_problem(resp, 415, "unsupported-media-type")
    resp = await app_client.post(
        "/v1/imports",
        content=b'--b\r\nContent-Disposition: form-data; name="options"\r\n\r\n{}',
        headers={**h, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert_problem(resp, 400, "bad-request")


async def test_importing_needs_create_on_the_object(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    manager = await new_user(app_client, tenant, role="sales_manager", password=PASSWORD)
    mh = await sign_in(user_api, tenant, manager["email"])
    data = csv_bytes(["subject"], [["X"]])
    resp = await upload(app_client, mh, {"object": "cases"}, data)  # managers read cases
    body = assert_problem(resp, 403, "forbidden")
    assert (body["object"], body["action"]) == ("cases", "create")
    rep = await new_user(app_client, tenant, role="sales_rep", password=PASSWORD)
    rh = await sign_in(user_api, tenant, rep["email"])
    resp = await upload(app_client, rh, {"object": "leads"}, csv_bytes(["last_name"], [["X"]]))
    assert_problem(resp, 403, "forbidden")  # reps do not import
    # A manager's import is hers: her new records are hers.
    done = await imported(app_client, mh, {"object": "leads"}, csv_bytes(["last_name"], [["Mine"]]))
    assert done["requested_by"] == {"type": "user", "id": manager["id"]}
    leads = await every(app_client, mh, "/v1/leads", filter="last_name[eq]:Mine")
    assert [lead["owner_id"] for lead in leads] == [manager["id"]]


async def test_another_tenant_never_sees_an_import(
    app_client: httpx.AsyncClient, tenant: Tenant, intruder: Tenant
) -> None:
    data = csv_bytes(["last_name", "email"], [["Ok", ""], ["Bad", "not an email"]])
    done = await imported(app_client, tenant.headers, {"object": "leads"}, data)
    assert done["errors_url"]
    for method, path in (("GET", ""), ("POST", "/cancel")):
        resp = await app_client.request(
            method, f"/v1/imports/{done['id']}{path}", headers=intruder.headers
        )
        assert_problem(resp, 404, "not-found")
    listed = (await app_client.get("/v1/imports", headers=intruder.headers)).json()["data"]
    assert done["id"] not in {i["id"] for i in listed}
    own = await imported(app_client, intruder.headers, {"object": "leads"}, data)
    query = urlsplit(own["errors_url"]).query
    resp = await app_client.get(f"/v1/imports/{done['id']}/errors?{query}")
    assert_problem(resp, 403, "forbidden")
    assert (await app_client.get(own["errors_url"])).status_code == 200


async def test_imports_are_audited(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    h = tenant.headers
    done = await imported(
        app_client,
        h,
        {"object": "leads"},
        csv_bytes(["last_name", "email"], [["A", ""], ["B", "no"]]),
    )
    resp = await app_client.get("/v1/audit", params={"type": "import.*", "order": "asc"}, headers=h)
    events = [e for e in resp.json()["data"] if e["record"]["id"] == done["id"]]
    assert [e["type"] for e in events] == ["import.requested", "import.completed"]
    assert (events[1]["data"]["created"], events[1]["data"]["failed"]) == (1, 1)
    keyed = {**h, "Idempotency-Key": uuid.uuid4().hex}
    first = await upload(app_client, h, {"object": "leads"}, b"last_name\nB\n", extra=keyed)
    again = await upload(app_client, h, {"object": "leads"}, b"last_name\nB\n", extra=keyed)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = await upload(app_client, h, {"object": "leads"}, b"last_name\nC\n", extra=keyed)
    assert_problem(other, 422, "idempotency-key-reused")
    await finished(app_client, h, "imports", first.json()["id"])
    assert len(await every(app_client, h, "/v1/leads", filter="last_name[eq]:B")) == 1
