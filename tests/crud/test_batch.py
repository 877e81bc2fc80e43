"""The kit's batch flow (meridian.crud.batch), through POST /v1/accounts/batch: per-item
results in order, savepoints, atomic batches, the Idempotency-Key of the whole batch,
If-Match per item, upserts by external id (concurrent ones included), limits and
permissions. What differs per kind is in tests/batch/test_router.py."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from meridian.crud.batch import MAX_ITEMS
from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.users import PASSWORD, new_user, sign_in

PATH = "/v1/accounts/batch"
PROBLEM = "urn:meridian:problem:"


async def send(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    items: list[dict[str, Any]],
    *,
    path: str = PATH,
    atomic: bool | None = None,
    key: str | None = None,
) -> list[dict[str, Any]]:
    """The batch's results (asserting the 200 and one result per item, in order)."""
    resp = await post(client, headers, items, path=path, atomic=atomic, key=key)
    assert resp.status_code == 200, resp.text
    results: list[dict[str, Any]] = resp.json()["results"]
    assert [r["index"] for r in results] == list(range(len(items)))
    return results


async def post(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    items: list[dict[str, Any]],
    *,
    path: str = PATH,
    atomic: bool | None = None,
    key: str | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {"items": items}
    if atomic is not None:
        body["atomic"] = atomic
    extra = {"Idempotency-Key": key} if key else {}
    return await client.post(path, json=body, headers={**headers, **extra})


def problem_of(result: dict[str, Any], status: int, slug: str) -> dict[str, Any]:
    assert result["status"] == status, result
    problem: dict[str, Any] = result["problem"]
    assert problem["status"] == status, result
    assert problem["type"] == PROBLEM + slug, result
    assert "record" not in result, result
    return problem


async def account(client: httpx.AsyncClient, tenant: Tenant, **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/accounts", json=body, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    made: dict[str, Any] = resp.json()
    return made


async def names(client: httpx.AsyncClient, tenant: Tenant) -> list[str]:
    resp = await client.get("/v1/accounts", params={"limit": 200}, headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    return sorted(a["name"] for a in resp.json()["data"])


async def test_mixed_operations_answer_one_result_per_item_in_order(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    existing = await account(app_client, tenant, name="Acme")
    results = await send(
        app_client,
        tenant.headers,
        [
            {"op": "create", "body": {"name": "Globex", "domain": "Globex.com"}},
            {"op": "update", "id": existing["id"], "body": {"name": "Acme Inc"}},
            {"op": "upsert", "external_id": "erp-7", "body": {"name": "Initech"}},
            {"op": "upsert", "external_id": "erp-7", "body": {"domain": "initech.com"}},
        ],
    )
    assert [r["status"] for r in results] == [201, 200, 201, 200]
    created, updated, upserted, again = (r["record"] for r in results)
    assert created["domain"] == "globex.com"  # the create schema's own normalisation
    assert updated["id"] == existing["id"]
    assert updated["version"] == 2
    assert updated["name"] == "Acme Inc"
    assert upserted["external_id"] == "erp-7"
    assert upserted["version"] == 1
    assert again["id"] == upserted["id"]
    assert again["version"] == 2
    assert again["name"] == "Initech"
    assert again["domain"] == "initech.com"
    for result in results:
        assert result["id"] == result["record"]["id"]
        # The record as the single-record endpoint shows it (the last write of each).
        got = await app_client.get(f"/v1/accounts/{result['id']}", headers=tenant.headers)
        if result is not upserted:
            assert got.json()["version"] >= result["record"]["version"]
    got = await app_client.get(f"/v1/accounts/{again['id']}", headers=tenant.headers)
    assert got.json() == again
    assert await names(app_client, tenant) == ["Acme Inc", "Globex", "Initech"]
    # The new external id is a list filter, exact.
    listed = await app_client.get(
        "/v1/accounts", params={"external_id": "erp-7"}, headers=tenant.headers
    )
    assert [a["id"] for a in listed.json()["data"]] == [again["id"]]
    filtered = await app_client.get(
        "/v1/accounts", params={"filter": "external_id[eq]:erp-7"}, headers=tenant.headers
    )
    assert [a["id"] for a in filtered.json()["data"]] == [again["id"]]


async def test_a_bad_item_gets_its_own_problem_and_the_others_are_applied(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    existing = await account(app_client, tenant, name="Parent")
    missing = str(uuid.uuid4())
    results = await send(
        app_client,
        tenant.headers,
        [
            {"op": "create", "body": {"name": "Good one"}},
            {"op": "create", "body": {"domain": "no-name.com"}},  # name is required
            {"op": "create", "body": {"name": "x", "colour": "red"}},  # unknown field
            {"op": "update", "id": missing, "body": {"name": "Nobody"}},
            {"op": "create", "body": {"name": "Orphan", "parent_id": missing}},
            {"op": "update", "id": existing["id"], "body": {"parent_id": existing["id"]}},
            {"op": "create", "body": {"name": "Good two", "parent_id": existing["id"]}},
        ],
    )
    assert [r["status"] for r in results] == [201, 422, 422, 404, 422, 409, 201]
    problem = problem_of(results[1], 422, "validation")
    assert problem["errors"] == [{"loc": ["name"], "msg": "Field required", "type": "missing"}]
    assert problem_of(results[2], 422, "validation")["errors"][0]["loc"] == ["colour"]
    problem_of(results[3], 404, "not-found")
    assert results[3]["id"] == missing
    assert problem_of(results[4], 422, "validation")["errors"][0]["type"] == "not_found"
    problem_of(results[5], 409, "conflict")
    assert await names(app_client, tenant) == ["Good one", "Good two", "Parent"]
    # The failed items left nothing behind: not their events either.
    events = await app_client.get(
        "/v1/events", params={"type": "account.*", "limit": 100}, headers=tenant.headers
    )
    kinds = [(e["type"], e["record"]["id"]) for e in events.json()["data"]]
    assert len([k for k in kinds if k[0] == "account.created"]) == 3
    assert ("account.updated", existing["id"]) not in kinds


async def test_an_atomic_batch_is_all_or_nothing(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    existing = await account(app_client, tenant, name="Steady")
    items = [
        {"op": "create", "body": {"name": "First"}},
        {"op": "update", "id": existing["id"], "body": {"name": "Moved"}},
        {"op": "update", "id": existing["id"], "if_match": '"1"', "body": {"name": "Stale"}},
        {"op": "create", "body": {"name": "Never tried"}},
    ]
    results = await send(app_client, tenant.headers, items, atomic=True)
    assert [r["status"] for r in results] == [424, 424, 412, 424]
    problem_of(results[2], 412, "precondition-failed")
    aborted = problem_of(results[0], 424, "batch-aborted")
    assert "item 2 failed (412 precondition-failed)" in aborted["detail"]
    assert results[1]["id"] == existing["id"]
    assert await names(app_client, tenant) == ["Steady"]
    got = await app_client.get(f"/v1/accounts/{existing['id']}", headers=tenant.headers)
    assert got.json() == existing  # rolled back: version 1, as before

    # Invalid bodies are all reported at once, before anything runs.
    results = await send(
        app_client,
        tenant.headers,
        [
            {"op": "create", "body": {}},
            {"op": "create", "body": {"name": "Fine"}},
            {"op": "update", "id": existing["id"], "body": {"name": ""}},
        ],
        atomic=True,
    )
    assert [r["status"] for r in results] == [422, 424, 422]
    # The same batch without a failure commits every item.
    results = await send(app_client, tenant.headers, items[:2], atomic=True)
    assert [r["status"] for r in results] == [201, 200]
    assert await names(app_client, tenant) == ["First", "Moved"]


async def test_a_retried_batch_replays_and_a_reused_key_is_refused(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    key = f"batch-{uuid.uuid4()}"
    items = [
        {"op": "create", "body": {"name": "Once", "tax_id": "DE 811 907 980"}},
        {"op": "upsert", "external_id": "erp-once", "body": {"name": "Upserted once"}},
        {"op": "create", "body": {}},
    ]
    first = await post(app_client, tenant.headers, items, key=key)
    assert first.status_code == 200, first.text
    assert "idempotent-replayed" not in first.headers
    again = await post(app_client, tenant.headers, items, key=key)
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()  # decrypted again from the stored ciphertext
    assert first.json()["results"][0]["record"]["tax_id"] == "DE 811 907 980"
    assert await names(app_client, tenant) == ["Once", "Upserted once"]
    # Replayed as stored, even though the upsert would now be an update.
    assert [r["status"] for r in again.json()["results"]] == [201, 201, 422]

    other = await post(app_client, tenant.headers, items[:1], key=key)
    assert_problem(other, 422, "idempotency-key-reused")
    # An atomic batch that failed keeps nothing: the same key runs it again.
    atomic_key = f"atomic-{uuid.uuid4()}"
    failing = [{"op": "create", "body": {"name": "Later"}}, {"op": "create", "body": {}}]
    for _ in range(2):
        resp = await post(app_client, tenant.headers, failing, atomic=True, key=atomic_key)
        assert resp.status_code == 200, resp.text
        assert "idempotent-replayed" not in resp.headers
        assert [r["status"] for r in resp.json()["results"]] == [424, 422]


async def test_if_match_is_per_item(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    a = await account(app_client, tenant, name="A")
    b = await account(app_client, tenant, name="B")
    results = await send(
        app_client,
        tenant.headers,
        [
            {"op": "update", "id": a["id"], "if_match": '"1"', "body": {"name": "A2"}},
            {"op": "update", "id": b["id"], "if_match": '"7"', "body": {"name": "B2"}},
            {"op": "update", "id": a["id"], "if_match": '"1"', "body": {"name": "A3"}},
            {"op": "update", "id": b["id"], "if_match": "*", "body": {"name": "B3"}},
            {"op": "update", "id": b["id"], "if_match": '"9999999999"', "body": {}},
        ],
    )
    assert [r["status"] for r in results] == [200, 412, 412, 200, 412]
    problem_of(results[1], 412, "precondition-failed")
    assert results[0]["record"]["version"] == 2
    assert results[3]["record"]["name"] == "B3"
    # An If-Match not in the ETag format is the whole request's mistake (as the header).
    resp = await post(
        app_client, tenant.headers, [{"op": "update", "id": a["id"], "if_match": "2", "body": {}}]
    )
    assert_problem(resp, 422, "validation")


async def test_upserts_create_then_update_and_an_external_id_is_unique(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    first = await send(
        app_client,
        tenant.headers,
        [{"op": "upsert", "external_id": "crm-1", "body": {"name": "N"}}],
    )
    assert first[0]["status"] == 201
    made = first[0]["record"]
    second = await send(
        app_client,
        tenant.headers,
        [
            {"op": "upsert", "external_id": "crm-1", "body": {"name": "N2"}},
            # The upsert body's own external_id must be the item's, if given at all.
            {"op": "upsert", "external_id": "crm-1", "body": {"external_id": "crm-2"}},
            # An update body of an existing record: a create schema would need a name.
            {"op": "upsert", "external_id": "crm-1", "body": {"domain": "n.com"}},
            # Not found, so created: the create schema applies (name required).
            {"op": "upsert", "external_id": "crm-3", "body": {"domain": "n.com"}},
        ],
    )
    assert [r["status"] for r in second] == [200, 422, 200, 422]
    assert second[0]["id"] == made["id"]
    assert second[2]["record"]["version"] == 3
    assert problem_of(second[3], 422, "validation")["errors"][0]["loc"] == ["name"]

    # A create (single or batched) with an external id in use is 409 duplicate, naming it.
    single = await app_client.post(
        "/v1/accounts", json={"name": "Dup", "external_id": "crm-1"}, headers=tenant.headers
    )
    assert assert_problem(single, 409, "duplicate")["duplicate_of"] == made["id"]
    results = await send(
        app_client,
        tenant.headers,
        [
            {"op": "create", "body": {"name": "Dup", "external_id": "crm-1"}},
            {"op": "create", "body": {"name": "New", "external_id": "crm-4"}},
            {"op": "create", "body": {"name": "New again", "external_id": "crm-4"}},
        ],
    )
    assert [r["status"] for r in results] == [409, 201, 409]
    assert problem_of(results[0], 409, "duplicate")["duplicate_of"] == made["id"]
    assert problem_of(results[2], 409, "duplicate")["duplicate_of"] == results[1]["id"]
    # Moving an external id onto another record is refused the same way; clearing works.
    other = results[1]["id"]
    moved = await app_client.patch(
        f"/v1/accounts/{other}", json={"external_id": "crm-1"}, headers=tenant.headers
    )
    assert assert_problem(moved, 409, "duplicate")["duplicate_of"] == made["id"]
    cleared = await send(
        app_client,
        tenant.headers,
        [
            {"op": "update", "id": made["id"], "body": {"external_id": None}},
            {"op": "update", "id": other, "body": {"external_id": "crm-1"}},
        ],
    )
    assert [r["status"] for r in cleared] == [200, 200]
    assert cleared[0]["record"]["external_id"] is None
    assert cleared[1]["record"]["external_id"] == "crm-1"


async def test_concurrent_upserts_of_one_external_id_make_one_record(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    external_id = f"race-{uuid.uuid4().hex[:8]}"

    async def upsert(n: int) -> list[dict[str, Any]]:
        item = {"op": "upsert", "external_id": external_id, "body": {"name": f"Racer {n}"}}
        return await send(app_client, tenant.headers, [item])

    outcomes = await asyncio.gather(*(upsert(n) for n in range(6)))
    statuses = sorted(results[0]["status"] for results in outcomes)
    assert statuses == [200, 200, 200, 200, 200, 201], outcomes
    assert len({results[0]["id"] for results in outcomes}) == 1
    listed = await app_client.get(
        "/v1/accounts", params={"external_id": external_id}, headers=tenant.headers
    )
    assert len(listed.json()["data"]) == 1
    assert listed.json()["data"][0]["version"] == 6


async def test_limits(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    too_many = [{"op": "create", "body": {"name": f"A{n}"}} for n in range(MAX_ITEMS + 1)]
    resp = await post(app_client, tenant.headers, too_many)
    problem = assert_problem(resp, 422, "validation")
    assert str(MAX_ITEMS) in problem["detail"], problem
    assert problem["errors"][0]["loc"] == ["items"]
    assert_problem(await post(app_client, tenant.headers, []), 422, "validation")
    unknown_op = [{"op": "delete", "id": str(uuid.uuid4())}]
    assert_problem(await post(app_client, tenant.headers, unknown_op), 422, "validation")
    # 1,000 items with a few KiB each are more than other requests may send (1 MiB)...
    big = [{"op": "create", "body": {"name": "x" * 255, "colour": "y" * 2000}}] * MAX_ITEMS
    results = await send(app_client, tenant.headers, big)
    assert {r["status"] for r in results} == {422}
    single = await app_client.post(
        "/v1/accounts", json={"name": "x", "colour": "y" * 2_000_000}, headers=tenant.headers
    )
    assert_problem(single, 413, "payload-too-large")
    # ... but not unbounded (8 MiB).
    huge = [{"op": "create", "body": {"name": "x", "colour": "y" * 9_000}}] * MAX_ITEMS
    assert_problem(await post(app_client, tenant.headers, huge), 413, "payload-too-large")
    # The record routes beside it do not read "batch" as an id.
    for method in ("GET", "PATCH", "DELETE", "OPTIONS", "PUT"):
        resp = await app_client.request(method, PATH, headers=tenant.headers)
        assert_problem(resp, 405, "method-not-allowed")
        assert resp.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("role", "statuses"),
    [
        # May update accounts but not create them: each create is 403 in its result.
        ("support_agent", [403, 200, 403, 200]),
        ("sales_manager", [201, 200, 201, 200]),
    ],
)
async def test_each_item_needs_its_permission(
    app_client: httpx.AsyncClient,
    user_api: httpx.AsyncClient,
    tenant: Tenant,
    role: str,
    statuses: list[int],
) -> None:
    user = await new_user(app_client, tenant, role=role, password=PASSWORD)
    headers = await sign_in(user_api, tenant, user["email"])
    mine = await account(app_client, tenant, name="Theirs", owner_id=user["id"])
    await account(
        app_client, tenant, name="Known", external_id=f"known-{role}", owner_id=user["id"]
    )
    results = await send(
        app_client,
        headers,
        [
            {"op": "create", "body": {"name": "New"}},
            {"op": "update", "id": mine["id"], "body": {"name": "Renamed"}},
            {"op": "upsert", "external_id": f"unknown-{role}", "body": {"name": "U"}},
            {"op": "upsert", "external_id": f"known-{role}", "body": {"name": "K"}},
        ],
    )
    assert [r["status"] for r in results] == statuses
    for result in results:
        if result["status"] == 403:
            problem = problem_of(result, 403, "forbidden")
            assert (problem["object"], problem["action"]) == ("accounts", "create")
    # Nothing the role may do at all: the whole batch is refused, as a single write is.
    only_creates = await post(app_client, headers, [{"op": "create", "body": {"name": "No"}}])
    if role == "support_agent":
        problem = assert_problem(only_creates, 403, "forbidden")
        assert (problem["object"], problem["action"]) == ("accounts", "create")
    else:
        assert only_creates.status_code == 200, only_creates.text
    reader = await new_user(app_client, tenant, role="read_only", password=PASSWORD)
    as_reader = await sign_in(user_api, tenant, reader["email"])
    refused = await post(app_client, as_reader, [{"op": "update", "id": mine["id"], "body": {}}])
    assert_problem(refused, 403, "forbidden")


async def test_a_scoped_user_writes_only_in_scope(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    rep = await new_user(app_client, tenant, role="sales_rep", password=PASSWORD)
    other = await new_user(app_client, tenant, role="sales_rep")
    headers = await sign_in(user_api, tenant, rep["email"])
    mine = await account(app_client, tenant, name="Mine", owner_id=rep["id"])
    theirs = await account(
        app_client, tenant, name="Theirs", owner_id=other["id"], external_id="theirs-1"
    )
    results = await send(
        app_client,
        headers,
        [
            {"op": "update", "id": theirs["id"], "body": {"name": "Taken over"}},
            {"op": "update", "id": theirs["id"], "if_match": '"1"', "body": {"name": "X"}},
            {"op": "upsert", "external_id": "theirs-1", "body": {"name": "Taken over"}},
            {"op": "update", "id": mine["id"], "body": {"name": "Mine too"}},
            {"op": "create", "body": {"name": "Made by the rep"}},
        ],
    )
    assert [r["status"] for r in results] == [404, 404, 409, 200, 201]
    # Never updated, never duplicated: the external id names a record it cannot see.
    assert problem_of(results[2], 409, "duplicate")["duplicate_of"] == theirs["id"]
    # A user's new record is theirs, as on POST.
    assert results[4]["record"]["owner_id"] == rep["id"]
    got = await app_client.get(f"/v1/accounts/{theirs['id']}", headers=tenant.headers)
    assert got.json() == theirs


async def test_another_tenants_ids_and_external_ids_are_not_there(
    app_client: httpx.AsyncClient, tenant: Tenant, intruder: Tenant
) -> None:
    owned = await account(app_client, tenant, name="Owned", external_id="shared-7")
    results = await send(
        app_client,
        intruder.headers,
        [
            {"op": "update", "id": owned["id"], "body": {"name": "pwned"}},
            {"op": "update", "id": owned["id"], "if_match": '"1"', "body": {"name": "pwned"}},
            {"op": "upsert", "external_id": "shared-7", "body": {"name": "Intruder's own"}},
            {"op": "create", "body": {"name": "Child", "parent_id": owned["id"]}},
        ],
    )
    assert [r["status"] for r in results] == [404, 404, 201, 422]
    # The other tenant's external id is invisible: a record of the intruder's own.
    assert results[2]["id"] != owned["id"]
    got = await app_client.get(f"/v1/accounts/{owned['id']}", headers=tenant.headers)
    assert got.json() == owned
    assert await names(app_client, tenant) == ["Owned"]
