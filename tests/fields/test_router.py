"""Custom fields over a real shard: definitions, values checked on every write and
returned with the record, filters, uniqueness, lookups, archiving without loss, the
tenant's JSON Schema, roles and isolation."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.fields.helpers import contact, define, ids
from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.users import PASSWORD, new_user, sign_in

Headers = dict[str, str]


async def test_required_unique_and_lookup(
    app_client: httpx.AsyncClient, tenant: Tenant, intruder: Tenant
) -> None:
    await define(
        app_client, tenant, "contacts", name="code", type="text", required=True, unique=True
    )
    await define(
        app_client, tenant, "contacts", name="partner", type="lookup", options={"target": "account"}
    )
    missing = await contact(app_client, tenant)
    assert_problem(missing, 422, "validation")
    first = await contact(app_client, tenant, code="ABC-1")
    assert first.status_code == 201, first.text
    dup = await contact(app_client, tenant, code="abc-1")  # unique ignoring case
    problem = assert_problem(dup, 409, "duplicate")
    assert problem["duplicate_of"] == first.json()["id"]
    assert_problem(
        await app_client.patch(
            f"/v1/contacts/{first.json()['id']}",
            json={"custom": {"code": None}},
            headers=tenant.headers,
        ),
        422,
        "validation",
    )
    account = await app_client.post("/v1/accounts", json={"name": "P"}, headers=tenant.headers)
    foreign = await app_client.post("/v1/accounts", json={"name": "X"}, headers=intruder.headers)
    ok = await contact(app_client, tenant, code="ABC-2", partner=account.json()["id"])
    assert ok.status_code == 201, ok.text
    for target in (foreign.json()["id"], str(uuid.uuid4())):
        assert_problem(
            await contact(app_client, tenant, code="ABC-3", partner=target), 422, "validation"
        )


async def test_a_deleted_record_leaves_no_lookup_pointing_at_it(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    await define(
        app_client, tenant, "contacts", name="partner", type="lookup", options={"target": "account"}
    )
    await define(
        app_client, tenant, "leads", name="origin", type="lookup", options={"target": "account"}
    )
    await define(
        app_client, tenant, "cases", name="reseller", type="lookup", options={"target": "account"},
        required=True,
    )  # fmt: skip
    partner = (await app_client.post("/v1/accounts", json={"name": "P"}, headers=h)).json()
    other = (await app_client.post("/v1/accounts", json={"name": "O"}, headers=h)).json()
    held = await contact(app_client, tenant, partner=partner["id"])
    kept = await contact(app_client, tenant, partner=other["id"])
    lead = await app_client.post(
        "/v1/leads", json={"last_name": "L", "custom": {"origin": partner["id"]}}, headers=h
    )
    assert lead.status_code == 201, lead.text
    # Deleting the account clears every lookup to it, each an update of its record.
    gone = await app_client.delete(f"/v1/accounts/{partner['id']}", headers=h)
    assert gone.status_code == 204, gone.text
    after = (await app_client.get(f"/v1/contacts/{held.json()['id']}", headers=h)).json()
    assert "partner" not in after["custom"]
    assert after["version"] == held.json()["version"] + 1
    lead_after = (await app_client.get(f"/v1/leads/{lead.json()['id']}", headers=h)).json()
    assert "origin" not in lead_after["custom"]
    untouched = (await app_client.get(f"/v1/contacts/{kept.json()['id']}", headers=h)).json()
    assert untouched["custom"] == {"partner": other["id"]}
    assert await ids(app_client, tenant, "contacts", f"custom.partner[eq]:{partner['id']}") == set()
    # A required lookup refuses the deletion of what it points to, and nothing changes.
    case = await app_client.post(
        "/v1/cases",
        json={"subject": "S", "custom": {"reseller": other["id"]}},
        headers=h,
    )
    assert case.status_code == 201, case.text
    refused = await app_client.delete(f"/v1/accounts/{other['id']}", headers=h)
    problem = assert_problem(refused, 409, "conflict")
    assert "custom.reseller" in problem["detail"]
    assert (await app_client.get(f"/v1/accounts/{other['id']}", headers=h)).status_code == 200
    still = (await app_client.get(f"/v1/contacts/{kept.json()['id']}", headers=h)).json()
    assert still["custom"] == {"partner": other["id"]}


async def test_roles_and_isolation(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant, intruder: Tenant
) -> None:
    made = await define(app_client, tenant, "accounts", name="tier", type="text")
    path = f"/v1/objects/accounts/fields/{made['id']}"
    rep = await new_user(app_client, tenant, password=PASSWORD)
    rep_h = await sign_in(user_api, tenant, rep["email"])
    assert (await app_client.get("/v1/objects/accounts/fields", headers=rep_h)).status_code == 200
    assert_problem(
        await app_client.post(
            "/v1/objects/accounts/fields",
            json={"name": "x", "label": "X", "type": "text"},
            headers=rep_h,
        ),
        403,
        "forbidden",
    )
    for method, url in (
        ("GET", path),
        ("PATCH", path),
        ("DELETE", path),
        ("POST", f"{path}/restore"),
    ):
        body = {"label": "pwned"} if method == "PATCH" else None
        resp = await app_client.request(method, url, json=body, headers=intruder.headers)
        assert_problem(resp, 404, "not-found")
    # Another object's path does not find the field either.
    assert_problem(
        await app_client.get(f"/v1/objects/contacts/fields/{made['id']}", headers=tenant.headers),
        404,
        "not-found",
    )
    # The intruder's accounts know nothing of the tenant's field.
    resp = await app_client.post(
        "/v1/accounts", json={"name": "I", "custom": {"tier": "gold"}}, headers=intruder.headers
    )
    assert_problem(resp, 422, "validation")


async def test_a_scoped_user_sorts_by_a_custom_field_within_their_scope(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    await define(app_client, tenant, "accounts", name="arr", type="number")
    rep = await new_user(app_client, tenant, password=PASSWORD)
    rep_h = await sign_in(user_api, tenant, rep["email"])
    for n, value in enumerate([5, None, 3, 9, None, 1]):
        body: dict[str, Any] = {"name": f"Q{n}", "owner_id": rep["id"] if n % 2 else None}
        if value is not None:
            body["custom"] = {"arr": value}
        made = await app_client.post("/v1/accounts", json=body, headers=tenant.headers)
        assert made.status_code == 201, made.text

    async def names(headers: Headers) -> list[str]:
        params = {"sort": "custom.arr", "limit": "2", "filter": "name[starts]:Q"}
        seen: list[str] = []
        while True:
            resp = await app_client.get("/v1/accounts", params=params, headers=headers)
            assert resp.status_code == 200, resp.text
            seen += [a["name"] for a in resp.json()["data"]]
            if resp.json()["next_cursor"] is None:
                return seen
            params["cursor"] = resp.json()["next_cursor"]

    everyone = await names(tenant.headers)
    assert everyone[:4] == ["Q5", "Q2", "Q0", "Q3"]
    assert await names(rep_h) == [n for n in everyone if int(n[1:]) % 2]
