"""Exports: a list written to a file by the worker, equal to what the list API gives
the requester (its filter, sort, record scope, masking, custom fields), downloaded by a
signed URL without a token; the tenant boundary; the audit trail; retention."""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import asyncpg
import httpx
import pytest

from meridian.runtime import Runtime
from meridian.settings import Settings
from meridian.transfers import files
from meridian.worker.main import RunningWorker
from meridian.worker.retention import prune_expired
from tests.fixtures.api import Tenant
from tests.fixtures.databases import raw_dsn
from tests.fixtures.problems import assert_problem
from tests.fixtures.users import PASSWORD, new_user, sign_in
from tests.transfers.conftest import CHUNK_ROWS
from tests.transfers.helpers import (
    csv_rows,
    every,
    exported,
    exporter_without_pii,
    finished,
    jsonl_rows,
)

pytestmark = pytest.mark.usefixtures("worker")
Headers = dict[str, str]


async def contacts(client: httpx.AsyncClient, tenant: Tenant, n: int, **extra: Any) -> list[Any]:
    made = []
    for i in range(n):
        body = {
            "first_name": f"F{i}",
            "last_name": f"Lovelace-{i:03d}" if i % 3 else f"Babbage-{i:03d}",
            "email": f"c{i}-{uuid.uuid4().hex[:6]}@example.com",
            "phone": f"+44 20 7946 {i:04d}",
            **extra,
        }
        resp = await client.post("/v1/contacts", json=body, headers=tenant.headers)
        assert resp.status_code == 201, resp.text
        made.append(resp.json())
    return made


def as_cells(record: dict[str, Any], columns: list[str]) -> dict[str, str]:
    """A record of the list as its CSV row shows it."""
    out = {}
    for column in columns:
        if column.startswith("custom."):
            value = record["custom"].get(column.removeprefix("custom."))
        else:
            value = record[column]
        if value is None:
            out[column] = ""
        elif isinstance(value, bool):
            out[column] = "true" if value else "false"
        elif isinstance(value, list | dict):
            import orjson

            out[column] = orjson.dumps(value).decode()
        else:
            out[column] = str(value)
    return out


async def test_a_filtered_export_is_the_list_in_csv_and_json_lines(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await contacts(app_client, tenant, 2 * CHUNK_ROWS + 7)
    query = {"filter": "last_name[starts]:Lovelace", "sort": "-last_name"}
    listed = await every(app_client, tenant.headers, "/v1/contacts", **query)
    assert len(listed) > CHUNK_ROWS  # several pages

    done, data = await exported(
        app_client, tenant.headers, object="contacts", format="jsonl", **query
    )
    assert jsonl_rows(data) == listed
    assert done["rows_written"] == len(listed)
    assert done["bytes_written"] == len(data)
    assert done["filter"] == query["filter"]

    done, data = await exported(
        app_client, tenant.headers, object="contacts", format="csv", **query
    )
    rows = csv_rows(data)
    columns = list(rows[0])
    assert columns[:3] == ["id", "created_at", "updated_at"]
    assert "email" in columns
    assert "custom" not in columns
    assert rows == [as_cells(r, columns) for r in listed]
    # Fields named: those columns, in that order.
    done, data = await exported(
        app_client,
        tenant.headers,
        object="contacts",
        format="csv",
        fields=["email", "last_name"],
        **query,
    )
    assert csv_rows(data) == [{"email": r["email"], "last_name": r["last_name"]} for r in listed]
    done, data = await exported(
        app_client, tenant.headers, object="contacts", format="jsonl", fields=["last_name"]
    )
    assert len(jsonl_rows(data)) == len(await every(app_client, tenant.headers, "/v1/contacts"))
    assert all(set(r) == {"last_name"} for r in jsonl_rows(data))


async def test_an_empty_export_has_its_header(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    done, data = await exported(
        app_client, tenant.headers, object="cases", format="csv", filter="subject[eq]:nothing"
    )
    assert done["rows_written"] == 0
    assert data.decode().splitlines()[0].startswith("id,created_at")
    done, data = await exported(app_client, tenant.headers, object="leads", format="jsonl")
    assert data == b""


async def test_custom_fields_are_columns(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    h = tenant.headers
    for field in (
        {"name": "size", "label": "Size", "type": "number"},
        {
            "name": "tags",
            "label": "Tags",
            "type": "multi_picklist",
            "options": {"values": ["a", "b"]},
        },
    ):
        resp = await app_client.post("/v1/objects/accounts/fields", json=field, headers=h)
        assert resp.status_code == 201, resp.text
    for i, custom in enumerate([{"size": 10, "tags": ["b", "a"]}, {"size": 3}, {}]):
        resp = await app_client.post(
            "/v1/accounts", json={"name": f"Acme {i}", "custom": custom}, headers=h
        )
        assert resp.status_code == 201, resp.text
    listed = await every(app_client, h, "/v1/accounts", sort="name")
    _done, data = await exported(app_client, h, object="accounts", format="csv", sort="name")
    rows = csv_rows(data)
    assert list(rows[0])[-2:] == ["custom.size", "custom.tags"]
    assert [(r["custom.size"], r["custom.tags"]) for r in rows] == [
        ("10", '["a","b"]'),
        ("3", ""),
        ("", ""),
    ]
    assert rows == [as_cells(r, list(rows[0])) for r in listed]
    _, data = await exported(app_client, h, object="accounts", format="jsonl", sort="-custom.size")
    assert [r["custom"].get("size") for r in jsonl_rows(data)] == [10, 3, None]
    _, data = await exported(
        app_client,
        h,
        object="accounts",
        format="csv",
        fields=["name", "custom.size"],
        filter="custom.size[gte]:5",
    )
    assert csv_rows(data) == [{"name": "Acme 0", "custom.size": "10"}]
    resp = await app_client.post(
        "/v1/exports",
        json={"object": "accounts", "format": "csv", "fields": ["custom.nope"]},
        headers=h,
    )
    body = assert_problem(resp, 422, "validation")
    assert body["errors"][0]["type"] == "not_found"


async def test_a_sales_rep_exports_only_their_records(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    """Record scope as the list applies it; and the export stays theirs."""
    manager = await new_user(app_client, tenant, role="sales_manager", password=PASSWORD)
    rep = await new_user(
        app_client, tenant, role="sales_rep", manager_id=manager["id"], password=PASSWORD
    )
    other = await new_user(app_client, tenant, role="sales_rep", password=PASSWORD)
    for owner in (rep, rep, other, manager):
        await contacts(app_client, tenant, 2, owner_id=owner["id"])
    rep_h = await sign_in(user_api, tenant, rep["email"])
    mine = await every(app_client, rep_h, "/v1/contacts")
    assert len(mine) == 4
    done, data = await exported(app_client, rep_h, object="contacts", format="jsonl")
    assert jsonl_rows(data) == mine
    # The manager sees her report's records too.
    manager_h = await sign_in(user_api, tenant, manager["email"])
    _, data = await exported(app_client, manager_h, object="contacts", format="jsonl")
    assert {r["id"] for r in jsonl_rows(data)} == {
        r["id"] for r in await every(app_client, manager_h, "/v1/contacts")
    }
    assert len(jsonl_rows(data)) == 6
    # The rep's export is hers: the manager, whose role sees no record beyond her own
    # line, neither lists it nor reads it; the tenant's client (every record) does.
    resp = await app_client.get(f"/v1/exports/{done['id']}", headers=manager_h)
    assert_problem(resp, 404, "not-found")
    listed = (await app_client.get("/v1/exports", headers=manager_h)).json()["data"]
    assert done["id"] not in {e["id"] for e in listed}
    resp = await app_client.get(f"/v1/exports/{done['id']}", headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["requested_by"] == {"type": "user", "id": rep["id"]}


async def test_sealed_fields_are_masked_without_pii_read(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    made = await contacts(app_client, tenant, 3)
    h = await exporter_without_pii(app_client, user_api, tenant)
    listed = await every(app_client, h, "/v1/contacts")
    assert all("***" in r["email"] for r in listed)
    _, data = await exported(app_client, h, object="contacts", format="jsonl")
    assert jsonl_rows(data) == listed
    _, data = await exported(app_client, h, object="contacts", format="csv")
    assert {r["email"] for r in csv_rows(data)} == {r["email"] for r in listed}
    assert not {m["email"] for m in made} & {r["email"] for r in csv_rows(data)}
    # A filter on a sealed field needs pii:read, as on the list.
    resp = await app_client.post(
        "/v1/exports",
        json={"object": "contacts", "format": "csv", "filter": f"email[eq]:{made[0]['email']}"},
        headers=h,
    )
    assert_problem(resp, 403, "forbidden")
    # Exporting needs read on the object too.
    resp = await app_client.post(
        "/v1/exports", json={"object": "accounts", "format": "csv"}, headers=h
    )
    body = assert_problem(resp, 403, "forbidden")
    assert (body["object"], body["action"]) == ("accounts", "read")


async def test_the_signed_url_works_without_a_token_only_as_given(
    app_client: httpx.AsyncClient, tenant: Tenant, intruder: Tenant, worker: RunningWorker
) -> None:
    await contacts(app_client, tenant, 2)
    done, data = await exported(app_client, tenant.headers, object="contacts", format="csv")
    url = urlsplit(done["download_url"])
    params = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert params["tenant"] == tenant.id
    assert int(params["expires"]) <= time.time() + 900
    path = url.path

    async def get(p: str = path, **changed: Any) -> httpx.Response:
        return await app_client.get(f"{p}?{urlencode({**params, **changed})}")

    resp = await get()
    assert resp.status_code == 200
    assert resp.content == data
    assert resp.headers["content-type"].startswith("text/csv")
    assert "attachment" in resp.headers["content-disposition"]
    tampered = params["signature"][:-1] + ("A" if params["signature"][-1] != "A" else "B")
    assert_problem(await get(signature=tampered), 403, "forbidden")
    assert_problem(await get(expires=str(int(params["expires"]) + 1)), 403, "forbidden")
    assert_problem(await get(tenant=intruder.id), 403, "forbidden")
    assert_problem(await get(tenant=str(uuid.uuid4())), 403, "forbidden")
    # A signature of the tenant for another of its exports opens only that one.
    other, _ = await exported(app_client, tenant.headers, object="accounts", format="csv")
    assert_problem(await get(f"/v1/exports/{other['id']}/download"), 403, "forbidden")
    # Signed correctly but expired: 410.
    runtime: Runtime = worker.context.runtime
    cipher = await runtime.keyring.active_cipher(uuid.UUID(tenant.id))
    past = int(time.time()) - 1
    signature = files.sign(
        cipher, "export-download", uuid.UUID(tenant.id), uuid.UUID(done["id"]), past
    )
    assert_problem(await get(expires=str(past), signature=signature), 410, "gone")


async def test_another_tenant_never_sees_an_export(
    app_client: httpx.AsyncClient, tenant: Tenant, intruder: Tenant
) -> None:
    await contacts(app_client, tenant, 1)
    done, _ = await exported(app_client, tenant.headers, object="contacts", format="jsonl")
    resp = await app_client.get(f"/v1/exports/{done['id']}", headers=intruder.headers)
    assert_problem(resp, 404, "not-found")
    listed = (await app_client.get("/v1/exports", headers=intruder.headers)).json()["data"]
    assert done["id"] not in {e["id"] for e in listed}
    # The intruder's own signed URL with the owner's export id: refused.
    own, _ = await exported(app_client, intruder.headers, object="contacts", format="jsonl")
    url = urlsplit(own["download_url"])
    resp = await app_client.get(f"/v1/exports/{done['id']}/download?{url.query}")
    assert_problem(resp, 403, "forbidden")


async def test_exports_are_audited_and_listed(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    done, _ = await exported(app_client, tenant.headers, object="opportunities", format="csv")
    resp = await app_client.get(
        "/v1/audit", params={"type": "export.*", "order": "asc"}, headers=tenant.headers
    )
    assert resp.status_code == 200, resp.text
    events = [e for e in resp.json()["data"] if e["record"]["id"] == done["id"]]
    assert [e["type"] for e in events] == [
        "export.requested",
        "export.completed",
        "export.downloaded",
    ]
    assert events[0]["actor"]["type"] == "client"
    assert events[1]["data"]["rows"] == 0
    page = await app_client.get("/v1/exports", params={"limit": 1}, headers=tenant.headers)
    assert page.status_code == 200, page.text
    assert page.json()["data"][0]["id"] == done["id"]  # newest first


async def test_idempotency_key_replays_the_export(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    keyed = {**tenant.headers, "Idempotency-Key": uuid.uuid4().hex}
    body = {"object": "contacts", "format": "csv"}
    first = await app_client.post("/v1/exports", json=body, headers=keyed)
    again = await app_client.post("/v1/exports", json=body, headers=keyed)
    assert first.status_code == again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = await app_client.post("/v1/exports", json={**body, "format": "jsonl"}, headers=keyed)
    assert_problem(other, 422, "idempotency-key-reused")
    await finished(app_client, tenant.headers, "exports", first.json()["id"])


async def test_files_go_after_their_retention(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings, worker: RunningWorker
) -> None:
    done, _ = await exported(app_client, tenant.headers, object="contacts", format="csv")
    shard = next(s.dsn.rsplit("/", 1)[1] for s in settings.shards if s.id == tenant.shard_id)
    conn = await asyncpg.connect(raw_dsn(shard))
    try:
        await conn.execute(
            "UPDATE data_file SET expires_at = now() - interval '1 second' WHERE tenant_id = $1",
            uuid.UUID(tenant.id),
        )
        await prune_expired(worker.context.runtime, default_days=30)
        left = await conn.fetchval(
            "SELECT count(*) FROM data_file_chunk WHERE tenant_id = $1", uuid.UUID(tenant.id)
        )
    finally:
        await conn.close()
    assert left == 0
    resp = await app_client.get(done["download_url"])
    assert_problem(resp, 410, "gone")
    # The export stays listed (its URL was issued before: GET gives none once expired).
    again = await app_client.get(f"/v1/exports/{done['id']}", headers=tenant.headers)
    assert again.status_code == 200
