"""When an undo is refused or partial: the survivor changed since (409 unless force),
30 days passed (410, and the retention pass deletes the snapshot), references deleted
or changed since (left as they are, reported), a merged record's external id taken."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from meridian.runtime import Runtime
from meridian.settings import Settings
from meridian.worker.retention import prune_expired
from tests.fixtures.api import Tenant
from tests.fixtures.engines import *  # noqa: F403 - the undo runs on both shard engines
from tests.fixtures.engines import Platform
from tests.fixtures.problems import assert_problem
from tests.merges.records import activity, execute, fetch, get, post


async def _merged(
    client: httpx.AsyncClient, tenant: Tenant, plural: str, survivor: str, *merged: str
) -> dict[str, Any]:
    resp = await client.post(
        f"/v1/{plural}/merge",
        json={"survivor_id": survivor, "merged_ids": list(merged)},
        headers=tenant.headers,
    )
    assert resp.status_code == 201, resp.text
    done: dict[str, Any] = resp.json()
    return done


async def test_a_changed_survivor_needs_force(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    x = await post(app_client, h, "/v1/accounts", name="Hooli", domain="hooli.example")
    y = await post(app_client, h, "/v1/accounts", name="Hooli XYZ")
    merge = await _merged(app_client, tenant, "accounts", x["id"], y["id"])
    changed = await app_client.patch(
        f"/v1/accounts/{x['id']}", json={"name": "Hooli Inc"}, headers=h
    )
    assert changed.status_code == 200, changed.text
    path = f"/v1/merges/{merge['merge_id']}/undo"
    assert_problem(await app_client.post(path, headers=h), 409, "conflict", "changed since")
    forced = await app_client.post(path, json={"force": True}, headers=h)
    assert forced.status_code == 200, forced.text
    assert (await get(app_client, h, f"/v1/accounts/{x['id']}"))["name"] == "Hooli"
    assert (await get(app_client, h, f"/v1/accounts/{y['id']}"))["name"] == "Hooli XYZ"


async def test_thirty_days_later_it_is_gone(
    app_client: httpx.AsyncClient,
    tenant: Tenant,
    platform: Platform,
    settings: Settings,
) -> None:
    h = tenant.headers
    x = await post(app_client, h, "/v1/contacts", last_name="Old", email="old@x.example")
    y = await post(app_client, h, "/v1/contacts?allow_duplicate=true", last_name="Older")
    merge = await _merged(app_client, tenant, "contacts", x["id"], y["id"])
    merge_id = uuid.UUID(merge["merge_id"])
    await execute(
        platform,
        tenant,
        "UPDATE merge_record SET created_at = now() - interval '31 days' "
        "WHERE tenant_id = $1 AND id = $2",
        uuid.UUID(tenant.id),
        merge_id,
    )
    path = f"/v1/merges/{merge_id}/undo"
    assert_problem(await app_client.post(path, headers=h), 410, "gone")
    # The retention pass deletes the snapshot (ciphertexts and all); the record stays.
    runtime = await Runtime.start(settings)
    try:
        await prune_expired(runtime, default_days=30)
    finally:
        await runtime.stop()
    (row,) = await fetch(
        platform,
        tenant,
        "SELECT state, snapshot FROM merge_record WHERE tenant_id = $1 AND id = $2",
        uuid.UUID(tenant.id),
        merge_id,
    )
    assert row == {"state": "expired", "snapshot": None}
    shown = await get(app_client, h, f"/v1/merges/{merge_id}")
    assert shown["state"] == "expired"
    assert_problem(await app_client.post(path, headers=h), 410, "gone")


async def test_references_changed_since_are_left_and_reported(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    a = await post(app_client, h, "/v1/accounts", name="Survivor")
    b = await post(app_client, h, "/v1/accounts", name="Merged")
    elsewhere = await post(app_client, h, "/v1/accounts", name="Elsewhere")
    moved = await post(app_client, h, "/v1/contacts", last_name="Moved", account_id=b["id"])
    gone = await post(app_client, h, "/v1/cases", subject="Closed", account_id=b["id"])
    stays = await post(app_client, h, "/v1/contacts", last_name="Stays", account_id=b["id"])
    call = await activity(app_client, tenant, "Call", account_id=b["id"])
    merge = await _merged(app_client, tenant, "accounts", a["id"], b["id"])
    patched = await app_client.patch(
        f"/v1/contacts/{moved['id']}", json={"account_id": elsewhere["id"]}, headers=h
    )
    assert patched.status_code == 200, patched.text
    assert (await app_client.delete(f"/v1/cases/{gone['id']}", headers=h)).status_code == 204
    undone = await app_client.post(f"/v1/merges/{merge['merge_id']}/undo", headers=h)
    assert undone.status_code == 200, undone.text
    skipped = {(s["table"], s["id"]): s["reason"] for s in undone.json()["skipped"]}
    assert skipped == {("contact", moved["id"]): "changed", ("case", gone["id"]): "deleted"}
    assert (await get(app_client, h, f"/v1/contacts/{moved['id']}"))["account_id"] == elsewhere[
        "id"
    ]
    assert (await get(app_client, h, f"/v1/contacts/{stays['id']}"))["account_id"] == b["id"]
    assert (await get(app_client, h, f"/v1/activities/{call['id']}"))["account_id"] == b["id"]
    assert (await get(app_client, h, f"/v1/merges/{merge['merge_id']}"))["skipped"] == (
        undone.json()["skipped"]
    )


async def test_an_external_id_taken_since_refuses_the_undo(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    x = await post(app_client, h, "/v1/leads", last_name="Keep")
    y = await post(app_client, h, "/v1/leads", last_name="Merge", external_id="crm-42")
    merge = await _merged(app_client, tenant, "leads", x["id"], y["id"])
    # The survivor took the merged lead's external id (it had none): it goes back.
    assert merge["survivor"]["external_id"] == "crm-42"
    patched = await app_client.patch(f"/v1/leads/{x['id']}", json={"external_id": None}, headers=h)
    assert patched.status_code == 200, patched.text
    await post(app_client, h, "/v1/leads", last_name="Newcomer", external_id="crm-42")
    path = f"/v1/merges/{merge['merge_id']}/undo"
    refused = await app_client.post(path, json={"force": True}, headers=h)
    assert_problem(refused, 409, "conflict", "external_id 'crm-42'")
    assert_problem(await app_client.get(f"/v1/leads/{y['id']}", headers=h), 404, "not-found")
