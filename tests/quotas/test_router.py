"""Quotas: what a tenant may keep and call, enforced where it is spent and shown at
``GET /v1/quotas``: records per object (409 quota-exceeded on a create, a batch item,
an import row), calls per day (429 on the day's quota), stored bytes (409 on a new
upload), each set per tenant by a platform admin; another tenant is not touched."""

from __future__ import annotations

import uuid

import httpx

from tests.crud.test_batch import send
from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.roles.helpers import role_headers
from tests.transfers.helpers import csv_bytes, upload


async def _limit(
    client: httpx.AsyncClient, admin: dict[str, str], tenant: Tenant, **body: object
) -> None:
    resp = await client.put(f"/admin/v1/tenants/{tenant.id}/limits", json=body, headers=admin)
    assert resp.status_code == 200, resp.text


async def _quotas(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, dict]:
    resp = await client.get("/v1/quotas", headers=headers)
    assert resp.status_code == 200, resp.text
    return {q["name"]: q for q in resp.json()["data"]}


async def test_records_per_object_are_counted_and_enforced(
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tenant: Tenant,
    other_tenant: Tenant,
) -> None:
    h = tenant.headers
    await _limit(app_client, admin_headers, tenant, records_per_object=3)
    for n in range(2):
        made = await app_client.post("/v1/contacts", json={"last_name": f"Q{n}"}, headers=h)
        assert made.status_code == 201, made.text
    shown = await _quotas(app_client, h)
    assert shown["records_per_object.contact"] == {
        "name": "records_per_object.contact",
        "limit": 3,
        "used": 2,
        "resets_in": None,
    }
    assert shown["records_per_object.account"]["used"] == 0
    # A batch of two: the first fits, the second is refused on its own.
    items = [{"op": "create", "body": {"last_name": f"B{n}"}} for n in range(2)]
    results = await send(app_client, h, items, path="/v1/contacts/batch")
    assert [r["status"] for r in results] == [201, 409], results
    refused = await app_client.post("/v1/contacts", json={"last_name": "Over"}, headers=h)
    problem = assert_problem(refused, 409, "quota-exceeded")
    assert (problem["quota"], problem["limit"], problem["used"]) == (
        "records_per_object.contact",
        3,
        3,
    )
    # Accounts have their own count; another tenant its own limit.
    assert (await app_client.post("/v1/accounts", json={"name": "A"}, headers=h)).status_code == 201
    other = await app_client.post(
        "/v1/contacts", json={"last_name": "X"}, headers=other_tenant.headers
    )
    assert other.status_code == 201
    # Deleting one makes room again.
    listed = (await app_client.get("/v1/contacts", headers=h)).json()["data"]
    gone = await app_client.delete(f"/v1/contacts/{listed[0]['id']}", headers=h)
    assert gone.status_code == 204
    again = await app_client.post("/v1/contacts", json={"last_name": "Room"}, headers=h)
    assert again.status_code == 201, again.text


async def test_calls_per_day_and_what_every_role_sees(
    app_client: httpx.AsyncClient, admin_headers: dict[str, str], tenant: Tenant
) -> None:
    await _limit(app_client, admin_headers, tenant, calls_per_day=4)
    reader = await role_headers(app_client, tenant, "read_only", scope="crm:read")
    shown = await _quotas(app_client, reader)  # the first call of the day
    assert (shown["calls_per_day"]["limit"], shown["calls_per_day"]["used"]) == (4, 1)
    assert shown["caller_per_minute"]["used"] == 1
    assert shown["stored_bytes"]["used"] == 0
    for _ in range(3):
        assert (await app_client.get("/v1/contacts", headers=tenant.headers)).status_code == 200
    spent = await app_client.get("/v1/contacts", headers=reader)
    problem = assert_problem(spent, 429, "rate-limited")
    assert (problem["quota"], problem["limit"]) == ("day", 4)
    assert int(spent.headers["retry-after"]) > 3600  # a rolling day: 6 hours a call


async def test_platform_admins_see_a_tenants_quotas_and_use(
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tenant: Tenant,
    other_tenant: Tenant,
) -> None:
    # Six a minute: a request comes back only every 10 s, so the counts hold still.
    await _limit(
        app_client,
        admin_headers,
        tenant,
        tenant_per_minute=6,
        calls_per_day=1000,
        records_per_object=7,
    )
    for name in ("A", "B"):
        made = await app_client.post("/v1/accounts", json={"name": name}, headers=tenant.headers)
        assert made.status_code == 201, made.text
    reader = await role_headers(app_client, tenant, "read_only", scope="crm:read")
    assert (await app_client.get("/v1/contacts", headers=reader)).status_code == 200
    own = await _quotas(app_client, tenant.headers)  # the tenant's fourth call today
    resp = await app_client.get(f"/admin/v1/tenants/{tenant.id}/quotas", headers=admin_headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["plan"] == "standard"  # onboarding's default
    shown = {q["name"]: q for q in resp.json()["data"]}
    # Every caller's requests (a client's, a user's), none taken by looking.
    assert (shown["calls_per_day"]["limit"], shown["calls_per_day"]["used"]) == (1000, 4)
    assert shown["tenant_per_minute"]["used"] == 4
    assert "caller_per_minute" not in shown  # each caller's own: the tenant's view
    assert (
        shown["records_per_object.account"]["limit"],
        shown["records_per_object.account"]["used"],
    ) == (7, 2)
    assert shown["stored_bytes"]["used"] == 0
    assert {k: v for k, v in own.items() if k.startswith("records")} == {
        k: v for k, v in shown.items() if k.startswith("records")
    }
    again = await app_client.get(f"/admin/v1/tenants/{tenant.id}/quotas", headers=admin_headers)
    assert {q["name"]: q["used"] for q in again.json()["data"]}["calls_per_day"] == 4
    # The other tenant's are its own.
    other = await app_client.get(
        f"/admin/v1/tenants/{other_tenant.id}/quotas", headers=admin_headers
    )
    assert {q["name"]: q["used"] for q in other.json()["data"]}["records_per_object.account"] == 0
    # Platform admins only; an unknown tenant is 404.
    denied = await app_client.get(f"/admin/v1/tenants/{tenant.id}/quotas", headers=tenant.headers)
    assert denied.status_code == 403
    missing = await app_client.get(
        f"/admin/v1/tenants/{uuid.uuid4()}/quotas", headers=admin_headers
    )
    assert_problem(missing, 404, "not-found")


async def test_stored_bytes_refuse_a_new_upload(
    app_client: httpx.AsyncClient, admin_headers: dict[str, str], tenant: Tenant
) -> None:
    h = tenant.headers
    data = csv_bytes(["last_name"], [[f"Stored {n}"] for n in range(50)])
    first = await upload(app_client, h, {"object": "contacts"}, data)
    assert first.status_code == 202, first.text
    used = (await _quotas(app_client, h))["stored_bytes"]["used"]
    assert used > 0
    await _limit(app_client, admin_headers, tenant, stored_bytes=used)
    second = await upload(app_client, h, {"object": "contacts"}, data)
    problem = assert_problem(second, 409, "quota-exceeded")
    assert (problem["quota"], problem["used"]) == ("stored_bytes", used)
    body = {"object": "contacts", "format": "csv"}
    export = await app_client.post("/v1/exports", json=body, headers=h)
    assert_problem(export, 409, "quota-exceeded")
    # No worker runs here: the accepted import is not left for another test's worker.
    cancelled = await app_client.post(f"/v1/imports/{first.json()['id']}/cancel", headers=h)
    assert cancelled.status_code == 200, cancelled.text
