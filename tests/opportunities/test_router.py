"""The opportunity API over a real shard: money, pipelines, listing, idempotency, isolation."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.users import new_user_id
from tests.opportunities.helpers import add_pipeline, default_pipeline, drop_default


async def new_account(client: httpx.AsyncClient, tenant: Tenant, name: str = "Acme") -> str:
    resp = await client.post("/v1/accounts", json={"name": name}, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    account_id: str = resp.json()["id"]
    return account_id


async def new_opportunity(
    client: httpx.AsyncClient, tenant: Tenant, account_id: str, **body: Any
) -> dict[str, Any]:
    body = {"account_id": account_id, "name": "Deal", "currency": "USD", **body}
    resp = await client.post("/v1/opportunities", json=body, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    opportunity: dict[str, Any] = resp.json()
    return opportunity


async def list_ids(client: httpx.AsyncClient, tenant: Tenant, **params: Any) -> list[str]:
    resp = await client.get("/v1/opportunities", params=params, headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    return [o["id"] for o in resp.json()["data"]]


async def test_opportunity_crud(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    account_id = await new_account(app_client, tenant)
    pipeline_id, stages = await default_pipeline(app_client, tenant)
    owner_id = await new_user_id(app_client, tenant)
    resp = await app_client.post(
        "/v1/opportunities",
        json={
            "account_id": account_id,
            "name": " Big deal ",
            "amount": "1250.5",
            "currency": "eur",
            "expected_close_date": "2027-03-31",
            "owner_id": owner_id,
        },
        headers=tenant.headers,
    )
    assert resp.status_code == 201, resp.text
    opp = resp.json()
    assert opp["name"] == "Big deal"
    assert opp["amount"] == "1250.50"  # a decimal string, never a float
    assert opp["currency"] == "EUR"
    # Defaults: the tenant's default pipeline and its first stage by position.
    assert opp["pipeline_id"] == pipeline_id
    assert opp["stage_id"] == stages[0]
    assert opp["expected_close_date"] == "2027-03-31"
    assert opp["owner_id"] == owner_id
    assert opp["version"] == 1
    assert "tenant_id" not in opp
    assert resp.headers["etag"] == '"1"'
    assert resp.headers["location"] == f"/v1/opportunities/{opp['id']}"

    url = f"/v1/opportunities/{opp['id']}"
    got = await app_client.get(url, headers=tenant.headers)
    assert got.status_code == 200
    assert got.json() == opp

    upd = await app_client.patch(
        url,
        json={"amount": 99.99, "stage_id": stages[2], "expected_close_date": None},
        headers={**tenant.headers, "If-Match": '"1"'},
    )
    assert upd.status_code == 200, upd.text
    changed = upd.json()
    assert changed["amount"] == "99.99"
    assert changed["stage_id"] == stages[2]
    assert changed["pipeline_id"] == pipeline_id
    assert changed["expected_close_date"] is None
    assert changed["name"] == "Big deal"
    assert changed["version"] == 2
    assert upd.headers["etag"] == '"2"'

    assert await list_ids(app_client, tenant) == [opp["id"]]

    deleted = await app_client.delete(url, headers={**tenant.headers, "If-Match": '"2"'})
    assert deleted.status_code == 204
    assert_problem(await app_client.get(url, headers=tenant.headers), 404, "not-found")
    assert_problem(await app_client.delete(url, headers=tenant.headers), 404, "not-found")


@pytest.mark.parametrize(
    ("amount", "stored"),
    [
        (0, "0.00"),
        ("0", "0.00"),
        ("-0", "0.00"),
        (10, "10.00"),
        ("10.5", "10.50"),
        ("10.500", "10.50"),
        (19.99, "19.99"),
        ("0.01", "0.01"),
        ("9999999999999999.99", "9999999999999999.99"),
    ],
)
async def test_amounts_are_exact(
    app_client: httpx.AsyncClient, tenant: Tenant, amount: Any, stored: str
) -> None:
    account_id = await new_account(app_client, tenant)
    opp = await new_opportunity(app_client, tenant, account_id, amount=amount)
    assert opp["amount"] == stored
    got = await app_client.get(f"/v1/opportunities/{opp['id']}", headers=tenant.headers)
    assert got.json()["amount"] == stored


async def test_amount_defaults_to_zero(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    account_id = await new_account(app_client, tenant)
    opp = await new_opportunity(app_client, tenant, account_id)
    assert opp["amount"] == "0.00"
    assert opp["expected_close_date"] is None
    assert opp["owner_id"] is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"account_id": None}, "account_id"),
        ({"account_id": "nope"}, "account_id"),
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 256}, "name"),
        ({"name": 5}, "name"),
        ({"currency": None}, "currency"),
        ({"currency": "ABC"}, "currency"),
        ({"currency": "XAU"}, "currency"),
        ({"currency": "BGN"}, "currency"),
        ({"currency": "US"}, "currency"),
        ({"currency": "USDX"}, "currency"),
        ({"currency": 840}, "currency"),
        ({"amount": -1}, "amount"),
        ({"amount": "-0.01"}, "amount"),
        ({"amount": "1.001"}, "amount"),
        ({"amount": "12345678901234567"}, "amount"),
        ({"amount": "NaN"}, "amount"),
        ({"amount": "Infinity"}, "amount"),
        ({"amount": "ten"}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": [1]}, "amount"),
        ({"pipeline_id": "x"}, "pipeline_id"),
        ({"stage_id": 1}, "stage_id"),
        ({"expected_close_date": "31/03/2027"}, "expected_close_date"),
        ({"expected_close_date": "2027-02-30"}, "expected_close_date"),
        ({"owner_id": "me"}, "owner_id"),
        ({"probability": 50}, "probability"),
        ({"tenant_id": str(uuid.uuid4())}, "tenant_id"),
        ({"version": 7}, "version"),
    ],
)
async def test_create_rejects_invalid_input(
    app_client: httpx.AsyncClient, tenant: Tenant, change: dict[str, Any], field: str
) -> None:
    account_id = await new_account(app_client, tenant)
    body = {"account_id": account_id, "name": "Deal", "currency": "USD", **change}
    resp = await app_client.post("/v1/opportunities", json=body, headers=tenant.headers)
    assert_problem(resp, 422, "validation")
    problem = resp.json()
    assert problem["type"] == "urn:meridian:problem:validation"
    assert problem["errors"][0]["loc"] == [field]
    assert await list_ids(app_client, tenant) == []


@pytest.mark.parametrize("missing", ["account_id", "name", "currency"])
async def test_create_requires_fields(
    app_client: httpx.AsyncClient, tenant: Tenant, missing: str
) -> None:
    account_id = await new_account(app_client, tenant)
    body = {"account_id": account_id, "name": "Deal", "currency": "USD"}
    del body[missing]
    resp = await app_client.post("/v1/opportunities", json=body, headers=tenant.headers)
    assert_problem(resp, 422, "validation", missing)


@pytest.mark.parametrize(
    "field", ["account_id", "name", "amount", "currency", "pipeline_id", "stage_id"]
)
async def test_patch_refuses_null_on_required_fields(
    app_client: httpx.AsyncClient, tenant: Tenant, field: str
) -> None:
    account_id = await new_account(app_client, tenant)
    opp = await new_opportunity(app_client, tenant, account_id)
    url = f"/v1/opportunities/{opp['id']}"
    resp = await app_client.patch(url, json={field: None}, headers=tenant.headers)
    assert_problem(resp, 422, "validation", f"{field}: cannot be null")
    assert (await app_client.get(url, headers=tenant.headers)).json() == opp


async def test_patch_validates_like_create(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    account_id = await new_account(app_client, tenant)
    opp = await new_opportunity(app_client, tenant, account_id)
    url = f"/v1/opportunities/{opp['id']}"
    for body in (
        {"currency": "ZZZ"},
        {"amount": -5},
        {"amount": "0.005"},
        {"bogus": True},
        {"name": ""},
    ):
        resp = await app_client.patch(url, json=body, headers=tenant.headers)
        assert_problem(resp, 422, "validation")
    ok = await app_client.patch(
        url, json={"currency": "gbp", "owner_id": None}, headers=tenant.headers
    )
    assert ok.status_code == 200
    assert ok.json()["currency"] == "GBP"


async def test_unknown_account_is_422_naming_the_field(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    missing = str(uuid.uuid4())
    resp = await app_client.post(
        "/v1/opportunities",
        json={"account_id": missing, "name": "Deal", "currency": "USD"},
        headers=tenant.headers,
    )
    assert_problem(resp, 422, "validation", f"account_id: no account {missing}")
    assert await list_ids(app_client, tenant) == []

    account_id = await new_account(app_client, tenant)
    opp = await new_opportunity(app_client, tenant, account_id)
    upd = await app_client.patch(
        f"/v1/opportunities/{opp['id']}", json={"account_id": missing}, headers=tenant.headers
    )
    assert_problem(upd, 422, "validation", f"account_id: no account {missing}")

    other = await new_account(app_client, tenant, "Globex")
    moved = await app_client.patch(
        f"/v1/opportunities/{opp['id']}", json={"account_id": other}, headers=tenant.headers
    )
    assert moved.status_code == 200
    assert moved.json()["account_id"] == other


async def test_pipeline_and_stage_on_create(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    account_id = await new_account(app_client, tenant)
    default_id, default_stages = await default_pipeline(app_client, tenant)
    # Positions deliberately not in insertion order: "first" means lowest position.
    other_id, other_stages = await add_pipeline(
        app_client, tenant, [("Late", 5), ("Early", 1), ("Middle", 3)]
    )

    explicit = await new_opportunity(
        app_client, tenant, account_id, pipeline_id=other_id, stage_id=other_stages["Middle"]
    )
    assert (explicit["pipeline_id"], explicit["stage_id"]) == (other_id, other_stages["Middle"])

    first = await new_opportunity(app_client, tenant, account_id, pipeline_id=other_id)
    assert (first["pipeline_id"], first["stage_id"]) == (other_id, other_stages["Early"])

    in_default = await new_opportunity(app_client, tenant, account_id, stage_id=default_stages[3])
    assert (in_default["pipeline_id"], in_default["stage_id"]) == (default_id, default_stages[3])

    count = len(await list_ids(app_client, tenant))
    missing = str(uuid.uuid4())
    for body, detail in (
        # A stage of another pipeline, whether that pipeline is named or the default.
        (
            {"pipeline_id": other_id, "stage_id": default_stages[0]},
            f"stage_id: stage {default_stages[0]} is not in pipeline {other_id}",
        ),
        (
            {"stage_id": other_stages["Early"]},
            f"stage_id: stage {other_stages['Early']} is not in pipeline {default_id}",
        ),
        ({"stage_id": missing}, f"stage_id: no stage {missing}"),
        ({"pipeline_id": missing}, f"pipeline_id: no pipeline {missing}"),
        (
            {"pipeline_id": missing, "stage_id": default_stages[0]},
            f"pipeline_id: no pipeline {missing}",
        ),
    ):
        resp = await app_client.post(
            "/v1/opportunities",
            json={"account_id": account_id, "name": "Deal", "currency": "USD", **body},
            headers=tenant.headers,
        )
        assert_problem(resp, 422, "validation", detail)
    assert len(await list_ids(app_client, tenant)) == count


async def test_pipeline_without_stages(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    account_id = await new_account(app_client, tenant)
    empty_id, _ = await add_pipeline(app_client, tenant, [])
    resp = await app_client.post(
        "/v1/opportunities",
        json={"account_id": account_id, "name": "Deal", "currency": "USD", "pipeline_id": empty_id},
        headers=tenant.headers,
    )
    assert_problem(resp, 409, "conflict", f"stage_id: pipeline {empty_id} has no stages")


async def test_tenant_without_default_pipeline(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    account_id = await new_account(app_client, tenant)
    other_id, other_stages = await add_pipeline(app_client, tenant, [("Only", 0)])
    await drop_default(app_client, tenant)

    resp = await app_client.post(
        "/v1/opportunities",
        json={"account_id": account_id, "name": "Deal", "currency": "USD"},
        headers=tenant.headers,
    )
    assert_problem(resp, 409, "conflict", "pipeline_id: the tenant has no default pipeline")
    named = await new_opportunity(app_client, tenant, account_id, pipeline_id=other_id)
    assert named["stage_id"] == other_stages["Only"]


async def test_pipeline_and_stage_on_patch(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    account_id = await new_account(app_client, tenant)
    default_id, default_stages = await default_pipeline(app_client, tenant)
    other_id, other_stages = await add_pipeline(app_client, tenant, [("A", 0), ("B", 1)])
    opp = await new_opportunity(app_client, tenant, account_id)
    url = f"/v1/opportunities/{opp['id']}"

    # Changing the pipeline needs a stage of the new pipeline.
    no_stage = await app_client.patch(url, json={"pipeline_id": other_id}, headers=tenant.headers)
    assert_problem(no_stage, 422, "validation", "stage_id: required when pipeline_id changes")
    wrong_stage = await app_client.patch(
        url, json={"pipeline_id": other_id, "stage_id": default_stages[1]}, headers=tenant.headers
    )
    assert_problem(
        wrong_stage,
        422,
        "validation",
        f"stage_id: stage {default_stages[1]} is not in pipeline {other_id}",
    )
    # A stage alone must belong to the opportunity's current pipeline.
    foreign_stage = await app_client.patch(
        url, json={"stage_id": other_stages["B"]}, headers=tenant.headers
    )
    assert_problem(
        foreign_stage,
        422,
        "validation",
        f"stage_id: stage {other_stages['B']} is not in pipeline {default_id}",
    )
    missing = str(uuid.uuid4())
    unknown = await app_client.patch(
        url, json={"pipeline_id": missing, "stage_id": default_stages[0]}, headers=tenant.headers
    )
    assert_problem(unknown, 422, "validation", f"pipeline_id: no pipeline {missing}")
    assert (await app_client.get(url, headers=tenant.headers)).json() == opp

    # Naming the current pipeline again is not a change.
    same = await app_client.patch(url, json={"pipeline_id": default_id}, headers=tenant.headers)
    assert same.status_code == 200, same.text
    moved = await app_client.patch(
        url, json={"pipeline_id": other_id, "stage_id": other_stages["B"]}, headers=tenant.headers
    )
    assert moved.status_code == 200, moved.text
    assert (moved.json()["pipeline_id"], moved.json()["stage_id"]) == (other_id, other_stages["B"])
    step = await app_client.patch(url, json={"stage_id": other_stages["A"]}, headers=tenant.headers)
    assert step.status_code == 200, step.text
    assert (step.json()["pipeline_id"], step.json()["stage_id"]) == (other_id, other_stages["A"])


async def test_filters(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    acme = await new_account(app_client, tenant, "Acme")
    globex = await new_account(app_client, tenant, "Globex")
    default_id, stages = await default_pipeline(app_client, tenant)
    other_id, other_stages = await add_pipeline(app_client, tenant, [("Only", 0)])
    owner = await new_user_id(app_client, tenant)
    a = await new_opportunity(app_client, tenant, acme, expected_close_date="2027-01-15")
    b = await new_opportunity(
        app_client,
        tenant,
        globex,
        stage_id=stages[1],
        expected_close_date="2027-02-01",
        owner_id=owner,
    )
    c = await new_opportunity(
        app_client,
        tenant,
        acme,
        pipeline_id=other_id,
        expected_close_date="2027-03-01",
        owner_id=owner,
    )
    d = await new_opportunity(app_client, tenant, globex)  # no close date

    assert await list_ids(app_client, tenant, account_id=acme) == [a["id"], c["id"]]
    assert await list_ids(app_client, tenant, pipeline_id=default_id) == [a["id"], b["id"], d["id"]]
    assert await list_ids(app_client, tenant, pipeline_id=other_id) == [c["id"]]
    assert await list_ids(app_client, tenant, stage_id=stages[0]) == [a["id"], d["id"]]
    assert await list_ids(app_client, tenant, stage_id=other_stages["Only"]) == [c["id"]]
    assert await list_ids(app_client, tenant, owner_id=owner) == [b["id"], c["id"]]
    assert await list_ids(app_client, tenant, owner_id=owner, account_id=acme) == [c["id"]]
    # The date bounds are inclusive; rows without a close date never match them.
    assert await list_ids(app_client, tenant, close_after="2027-02-01") == [b["id"], c["id"]]
    assert await list_ids(app_client, tenant, close_before="2027-02-01") == [a["id"], b["id"]]
    assert await list_ids(
        app_client, tenant, close_after="2027-01-16", close_before="2027-02-28"
    ) == [b["id"]]
    assert await list_ids(
        app_client, tenant, close_after="2027-02-01", close_before="2027-02-01"
    ) == [b["id"]]
    assert await list_ids(app_client, tenant, account_id=str(uuid.uuid4())) == []

    backwards = await app_client.get(
        "/v1/opportunities",
        params={"close_after": "2027-03-01", "close_before": "2027-01-01"},
        headers=tenant.headers,
    )
    # An inverted range is empty, not an error (no schema can say "after <= before").
    assert backwards.status_code == 200, backwards.text
    assert backwards.json() == {"data": [], "next_cursor": None}
    for params in ({"close_after": "soon"}, {"stage_id": "x"}, {"owner_id": "1"}):
        resp = await app_client.get("/v1/opportunities", params=params, headers=tenant.headers)
        assert_problem(resp, 422, "validation")


async def test_sorting(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    account_id = await new_account(app_client, tenant)
    specs = [("Delta", "500"), ("Alpha", "20.5"), ("Charlie", "100"), ("Bravo", "20.50")]
    created = [
        await new_opportunity(app_client, tenant, account_id, name=n, amount=a) for n, a in specs
    ]
    ids = [o["id"] for o in created]

    assert await list_ids(app_client, tenant) == ids  # default: created_at
    assert await list_ids(app_client, tenant, sort="-created_at") == ids[::-1]
    by_amount = sorted(created, key=lambda o: (Decimal(o["amount"]), o["id"]))
    assert await list_ids(app_client, tenant, sort="amount") == [o["id"] for o in by_amount]
    assert await list_ids(app_client, tenant, sort="-amount") == [
        o["id"] for o in reversed(by_amount)
    ]
    by_name = [o["name"] for o in await _page(app_client, tenant, sort="name")]
    assert by_name == ["Alpha", "Bravo", "Charlie", "Delta"]
    by_name_desc = [o["name"] for o in await _page(app_client, tenant, sort="-name")]
    assert by_name_desc == by_name[::-1]

    touched = await app_client.patch(
        f"/v1/opportunities/{ids[1]}", json={"amount": 1}, headers=tenant.headers
    )
    assert touched.status_code == 200
    assert (await list_ids(app_client, tenant, sort="-updated_at"))[0] == ids[1]

    for bad in ("currency", "expected_close_date", "-stage_id"):
        resp = await app_client.get(
            "/v1/opportunities", params={"sort": bad}, headers=tenant.headers
        )
        assert_problem(resp, 400, "bad-request", "Cannot sort by")


async def _page(client: httpx.AsyncClient, tenant: Tenant, **params: Any) -> list[dict[str, Any]]:
    resp = await client.get("/v1/opportunities", params=params, headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    data: list[dict[str, Any]] = resp.json()["data"]
    return data


@pytest.mark.parametrize("sort", ["amount", "-amount", "name", "-created_at"])
async def test_pagination_visits_every_row_once(
    app_client: httpx.AsyncClient, tenant: Tenant, sort: str
) -> None:
    account_id = await new_account(app_client, tenant)
    other_account = await new_account(app_client, tenant, "Other")
    # Repeated amounts and names make the id tie-breaker work across page edges.
    for i in range(9):
        await new_opportunity(
            app_client, tenant, account_id, name=f"Deal {i % 4}", amount=f"{(i % 3) * 10}.25"
        )
    await new_opportunity(app_client, tenant, other_account)  # filtered out
    expected = [o["id"] for o in await _page(app_client, tenant, sort=sort, account_id=account_id)]
    assert len(expected) == 9

    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2, "sort": sort, "account_id": account_id}
    while True:
        resp = await app_client.get("/v1/opportunities", params=params, headers=tenant.headers)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        seen += [o["id"] for o in page["data"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == expected

    first = await app_client.get(
        "/v1/opportunities", params={"limit": 2, "sort": sort}, headers=tenant.headers
    )
    cursor = first.json()["next_cursor"]
    wrong = await app_client.get(
        "/v1/opportunities",
        params={"limit": 2, "sort": sort, "cursor": cursor, "close_after": "2027-01-01"},
        headers=tenant.headers,
    )
    assert_problem(wrong, 400, "invalid-cursor")
    assert wrong.json()["type"] == "urn:meridian:problem:invalid-cursor"


async def test_idempotent_create(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    account_id = await new_account(app_client, tenant)
    headers = {**tenant.headers, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    body = {"account_id": account_id, "name": "Deal", "currency": "USD", "amount": "10.10"}
    first = await app_client.post("/v1/opportunities", json=body, headers=headers)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers

    replay = await app_client.post("/v1/opportunities", json=body, headers=headers)
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert replay.json()["amount"] == "10.10"
    assert replay.headers["location"] == first.headers["location"]
    assert replay.headers["etag"] == first.headers["etag"]
    assert await list_ids(app_client, tenant) == [first.json()["id"]]

    different = await app_client.post(
        "/v1/opportunities", json={**body, "amount": "10.11"}, headers=headers
    )
    assert_problem(different, 422, "idempotency-key-reused")
    assert different.json()["type"] == "urn:meridian:problem:idempotency-key-reused"
    assert await list_ids(app_client, tenant) == [first.json()["id"]]

    too_long = await app_client.post(
        "/v1/opportunities", json=body, headers={**tenant.headers, "Idempotency-Key": "k" * 256}
    )
    assert_problem(too_long, 422, "validation")  # beyond the header's declared format


async def test_if_match_conflicts_are_412(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    account_id = await new_account(app_client, tenant)
    _, stages = await default_pipeline(app_client, tenant)
    opp = await new_opportunity(app_client, tenant, account_id)
    url = f"/v1/opportunities/{opp['id']}"
    moved = await app_client.patch(url, json={"amount": 5}, headers=tenant.headers)
    assert moved.json()["version"] == 2

    # Also when the change touches references (checked only after the version).
    for body in ({"amount": 6}, {"stage_id": stages[1]}, {"stage_id": str(uuid.uuid4())}):
        stale = await app_client.patch(
            url, json=body, headers={**tenant.headers, "If-Match": '"1"'}
        )
        assert_problem(stale, 412, "precondition-failed")
    stale_delete = await app_client.delete(url, headers={**tenant.headers, "If-Match": '"1"'})
    assert_problem(stale_delete, 412, "precondition-failed")
    foreign = await app_client.delete(url, headers={**tenant.headers, "If-Match": '"abc"'})
    assert_problem(foreign, 422, "validation")  # not an ETag this API issues
    assert (await app_client.get(url, headers=tenant.headers)).json() == moved.json()

    current = await app_client.patch(
        url, json={"stage_id": stages[1]}, headers={**tenant.headers, "If-Match": '"2"'}
    )
    assert current.status_code == 200
    gone = await app_client.delete(url, headers={**tenant.headers, "If-Match": '"3"'})
    assert gone.status_code == 204


async def test_another_tenants_records_cannot_be_referenced_or_listed(
    app_client: httpx.AsyncClient, tenant: Tenant, intruder: Tenant
) -> None:
    """What the route matrix (tests/test_cross_tenant.py) does not cover: references in
    bodies and list filters across tenants."""
    account_id = await new_account(app_client, tenant)
    pipeline_id, stages = await default_pipeline(app_client, tenant)
    opp = await new_opportunity(app_client, tenant, account_id, name="Secret", amount="1000000")
    url = f"/v1/opportunities/{opp['id']}"

    # POST and PATCH cannot reference the owner's account, pipeline or stage.
    own_account = await new_account(app_client, intruder)
    for body, detail in (
        ({"account_id": account_id}, f"account_id: no account {account_id}"),
        ({"pipeline_id": pipeline_id}, f"pipeline_id: no pipeline {pipeline_id}"),
        (
            {"pipeline_id": pipeline_id, "stage_id": stages[0]},
            f"pipeline_id: no pipeline {pipeline_id}",
        ),
        ({"stage_id": stages[0]}, f"stage_id: no stage {stages[0]}"),
    ):
        resp = await app_client.post(
            "/v1/opportunities",
            json={"account_id": own_account, "name": "Spy", "currency": "USD", **body},
            headers=intruder.headers,
        )
        assert_problem(resp, 422, "validation", detail)
    own = await new_opportunity(app_client, intruder, own_account, name="Spy")
    for body, detail in (
        ({"account_id": account_id}, f"account_id: no account {account_id}"),
        ({"stage_id": stages[1]}, f"stage_id: no stage {stages[1]}"),
        (
            {"pipeline_id": pipeline_id, "stage_id": stages[1]},
            f"pipeline_id: no pipeline {pipeline_id}",
        ),
    ):
        resp = await app_client.patch(
            f"/v1/opportunities/{own['id']}", json=body, headers=intruder.headers
        )
        assert_problem(resp, 422, "validation", detail)

    # LIST: the owner's rows are invisible, whatever the filter.
    assert await list_ids(app_client, intruder) == [own["id"]]
    for params in (
        {"account_id": account_id},
        {"pipeline_id": pipeline_id},
        {"stage_id": stages[0]},
        {"sort": "-amount"},
    ):
        ids = await list_ids(app_client, intruder, **params)
        assert opp["id"] not in ids

    # Nothing of the owner's changed.
    assert (await app_client.get(url, headers=tenant.headers)).json() == opp
    assert await list_ids(app_client, tenant) == [opp["id"]]
