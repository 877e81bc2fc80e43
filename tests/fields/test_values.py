"""Custom fields on both shard engines (PostgreSQL and Citus): values checked and
returned, filters, sorts, archiving and restoring without loss, the JSON Schema."""

from __future__ import annotations

from typing import Any

import httpx

from tests.fields.helpers import contact, define, ids
from tests.fixtures.api import Tenant
from tests.fixtures.engines import *  # noqa: F403 - both shard engines
from tests.fixtures.problems import assert_problem

Headers = dict[str, str]


async def test_values_are_checked_returned_and_patched(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await define(
        app_client,
        tenant,
        "contacts",
        name="region",
        type="picklist",
        options={"values": ["EMEA", "Americas", "APAC"]},
        default="EMEA",
    )
    await define(app_client, tenant, "contacts", name="seats", type="number", options={"min": 0})
    await define(
        app_client, tenant, "contacts", name="budget", type="currency", options={"currency": "EUR"}
    )
    await define(app_client, tenant, "contacts", name="renewal", type="date")
    await define(app_client, tenant, "contacts", name="vip", type="boolean")
    await define(
        app_client,
        tenant,
        "contacts",
        name="tags",
        type="multi_picklist",
        options={"values": ["a", "b", "c"]},
    )
    await define(app_client, tenant, "contacts", name="site", type="url")
    await define(app_client, tenant, "contacts", name="met_at", type="datetime")
    made = await contact(
        app_client,
        tenant,
        seats=12,
        budget="1200.5",
        renewal="2027-01-31",
        vip=True,
        tags=["c", "a", "a"],
        site="https://example.com/x",
        met_at="2026-11-02T10:00:00+01:00",
    )
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["custom"] == {
        "region": "EMEA",  # the default
        "seats": 12,
        "budget": "1200.50",
        "renewal": "2027-01-31",
        "vip": True,
        "tags": ["a", "c"],  # the field's order, once each
        "site": "https://example.com/x",
        "met_at": "2026-11-02T10:00:00+01:00",
    }
    path = f"/v1/contacts/{body['id']}"
    got = await app_client.get(path, headers=tenant.headers)
    assert got.json()["custom"] == body["custom"]
    # A patch: what is named changes, null clears, the rest stays.
    patched = await app_client.patch(
        path, json={"custom": {"seats": 15, "vip": None}}, headers=tenant.headers
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["custom"]["seats"] == 15
    assert "vip" not in patched.json()["custom"]
    assert patched.json()["custom"]["region"] == "EMEA"
    # Every problem names the field.
    for bad, name in (
        ({"seats": -1}, "seats"),
        ({"seats": "12"}, "seats"),
        ({"budget": "1.234"}, "budget"),
        ({"renewal": "31/01/2027"}, "renewal"),
        ({"region": "Mars"}, "region"),
        ({"tags": ["z"]}, "tags"),
        ({"site": "ftp://x"}, "site"),
        ({"met_at": "2026-11-02T10:00:00"}, "met_at"),
        ({"nope": 1}, "nope"),
    ):
        problem = assert_problem(await contact(app_client, tenant, **bad), 422, "validation")
        assert problem["errors"][0]["loc"][-1] == f"custom.{name}", problem


async def test_filters_on_custom_fields(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    await define(
        app_client,
        tenant,
        "contacts",
        name="region",
        type="picklist",
        options={"values": ["EMEA", "APAC"]},
    )
    await define(app_client, tenant, "contacts", name="seats", type="number")
    await define(
        app_client,
        tenant,
        "contacts",
        name="tags",
        type="multi_picklist",
        options={"values": ["a", "b"]},
    )
    a = (await contact(app_client, tenant, region="EMEA", seats=5, tags=["a"])).json()["id"]
    b = (await contact(app_client, tenant, region="APAC", seats=50, tags=["a", "b"])).json()["id"]
    c = (await contact(app_client, tenant)).json()["id"]
    assert await ids(app_client, tenant, "contacts", "custom.region[eq]:EMEA") == {a}
    assert await ids(app_client, tenant, "contacts", "custom.seats[gte]:10") == {b}
    assert await ids(app_client, tenant, "contacts", "custom.tags[eq]:b") == {b}
    assert await ids(app_client, tenant, "contacts", "custom.region[null]:true") == {c}
    # ne keeps records without a value, as for any nullable field.
    assert await ids(app_client, tenant, "contacts", "custom.region[ne]:EMEA") == {b, c}
    assert await ids(
        app_client, tenant, "contacts", "or(custom.region[eq]:APAC,custom.seats[lt]:6)"
    ) == {a, b}
    for bad in ("custom.nope[eq]:1", "custom.seats[eq]:many", "custom.region[eq]:Mars"):
        resp = await app_client.get("/v1/contacts", params={"filter": bad}, headers=tenant.headers)
        assert_problem(resp, 422, "validation")


async def test_definitions_never_lose_data(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    region = await define(
        app_client,
        tenant,
        "contacts",
        name="region",
        type="picklist",
        options={"values": ["EMEA", "APAC"]},
    )
    made = (await contact(app_client, tenant, region="APAC")).json()
    fields = f"/v1/objects/contacts/fields/{region['id']}"
    # A value records hold cannot be removed; adding one is fine.
    assert_problem(
        await app_client.patch(
            fields, json={"options": {"values": ["EMEA"]}}, headers=tenant.headers
        ),
        409,
        "conflict",
    )
    grown = await app_client.patch(
        fields, json={"options": {"values": ["EMEA", "APAC", "LATAM"]}}, headers=tenant.headers
    )
    assert grown.status_code == 200, grown.text
    # The type and the name cannot change.
    assert_problem(
        await app_client.patch(fields, json={"type": "text"}, headers=tenant.headers),
        422,
        "validation",
    )
    # Archived: gone from the record and from filters, kept; restored: back as it was.
    assert (await app_client.delete(fields, headers=tenant.headers)).status_code == 204
    record = await app_client.get(f"/v1/contacts/{made['id']}", headers=tenant.headers)
    assert record.json()["custom"] == {}
    resp = await app_client.get(
        "/v1/contacts", params={"filter": "custom.region[eq]:APAC"}, headers=tenant.headers
    )
    assert_problem(resp, 422, "validation")
    assert_problem(await define_again(app_client, tenant), 409, "conflict")
    restored = await app_client.post(f"{fields}/restore", headers=tenant.headers)
    assert restored.status_code == 200, restored.text
    record = await app_client.get(f"/v1/contacts/{made['id']}", headers=tenant.headers)
    assert record.json()["custom"] == {"region": "APAC"}
    # Purging needs an archived field, and then the values go for good.
    assert_problem(
        await app_client.delete(fields, params={"purge": "true"}, headers=tenant.headers),
        409,
        "conflict",
    )
    assert (await app_client.delete(fields, headers=tenant.headers)).status_code == 204
    assert (
        await app_client.delete(fields, params={"purge": "true"}, headers=tenant.headers)
    ).status_code == 204
    assert_problem(await app_client.get(fields, headers=tenant.headers), 404, "not-found")


async def define_again(client: httpx.AsyncClient, tenant: Tenant) -> httpx.Response:
    return await client.post(
        "/v1/objects/contacts/fields",
        json={"name": "region", "label": "Again", "type": "text"},
        headers=tenant.headers,
    )


async def test_schema_and_other_objects(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    await define(app_client, tenant, "cases", name="product", type="text", required=True)
    await define(app_client, tenant, "leads", name="budget", type="decimal", options={"scale": 0})
    schema = await app_client.get("/v1/objects/cases/schema", headers=tenant.headers)
    assert schema.status_code == 200, schema.text
    custom = schema.json()["properties"]["custom"]
    assert custom["properties"]["product"]["type"] == "string"
    assert custom["required"] == ["product"]
    assert "subject" in schema.json()["properties"]
    assert_problem(
        await app_client.post("/v1/cases", json={"subject": "x"}, headers=tenant.headers),
        422,
        "validation",
    )
    made = await app_client.post(
        "/v1/cases", json={"subject": "x", "custom": {"product": "Widget"}}, headers=tenant.headers
    )
    assert made.status_code == 201, made.text
    assert await ids(app_client, tenant, "cases", "custom.product[starts]:Wid") == {
        made.json()["id"]
    }
    lead = await app_client.post(
        "/v1/leads", json={"last_name": "L", "custom": {"budget": 5000}}, headers=tenant.headers
    )
    assert lead.json()["custom"] == {"budget": "5000"}
    assert_problem(
        await app_client.get("/v1/objects/widgets/fields", headers=tenant.headers),
        422,
        "validation",
    )


async def test_lists_sort_by_custom_fields_page_by_page(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await define(
        app_client, tenant, "accounts", name="arr", type="currency", options={"currency": "EUR"}
    )
    await define(
        app_client,
        tenant,
        "accounts",
        name="tags",
        type="multi_picklist",
        options={"values": ["a"]},
    )
    values = [300, 100, None, 200, 100, None, 50]
    made = []
    for n, value in enumerate(values):
        body: dict[str, Any] = {"name": f"S{n}"}
        if value is not None:
            body["custom"] = {"arr": value}
        resp = await app_client.post("/v1/accounts", json=body, headers=tenant.headers)
        assert resp.status_code == 201, resp.text
        made.append(resp.json())

    async def walk(sort: str, headers: Headers, size: int = 2) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            params = {"sort": sort, "limit": str(size), "filter": "name[starts]:S"}
            if cursor:
                params["cursor"] = cursor
            resp = await app_client.get("/v1/accounts", params=params, headers=headers)
            assert resp.status_code == 200, resp.text
            seen += [row["name"] for row in resp.json()["data"]]
            cursor = resp.json()["next_cursor"]
            if cursor is None:
                return seen

    with_value = sorted(
        (v, m["id"], m["name"]) for v, m in zip(values, made, strict=True) if v is not None
    )
    without = sorted((m["id"], m["name"]) for v, m in zip(values, made, strict=True) if v is None)
    assert await walk("custom.arr", tenant.headers) == [n for _, _, n in with_value] + [
        n for _, n in without
    ]
    descending = sorted(with_value, key=lambda t: (t[0], t[1]), reverse=True)
    assert await walk("-custom.arr", tenant.headers, size=3) == [n for _, _, n in descending] + [
        n for _, n in without
    ]
    for bad in ("custom.nope", "custom.tags"):
        resp = await app_client.get("/v1/accounts", params={"sort": bad}, headers=tenant.headers)
        assert_problem(resp, 400, "bad-request")
    # A cursor of one sort is refused for another.
    first = await app_client.get(
        "/v1/accounts", params={"sort": "custom.arr", "limit": "1"}, headers=tenant.headers
    )
    resp = await app_client.get(
        "/v1/accounts",
        params={"sort": "-custom.arr", "cursor": first.json()["next_cursor"]},
        headers=tenant.headers,
    )
    assert resp.status_code == 400, resp.text
