"""Cursor (keyset) pagination on the accounts resource: every row exactly once, in the
order of the sort, whatever the page size; a cursor only works for the query it came from."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.shard_db import superuser

if TYPE_CHECKING:
    from tests.fixtures.databases import TestDatabases

ROWS = 40
# Few names, with duplicates and case variants, so ties on the sort value are common.
NAMES = ["Acme", "acme", "Beta", "Zeta", "Ångström", "beta"]
SORTS = ["name", "-name", "created_at", "-created_at", "updated_at", "-updated_at"]


async def _make_accounts(
    client: httpx.AsyncClient, databases: TestDatabases, tenant: Tenant, n: int
) -> list[dict[str, Any]]:
    ids = []
    for i in range(n):
        resp = await client.post(
            "/v1/accounts", json={"name": NAMES[i % len(NAMES)]}, headers=tenant.headers
        )
        assert resp.status_code == 201, resp.text
        ids.append(uuid.UUID(resp.json()["id"]))
    # Ties on the timestamps too: rows created in separate requests would all differ.
    base = datetime(2024, 1, 1, tzinfo=UTC)
    async with superuser(databases, tenant.shard_id) as su:
        await su.executemany(
            "UPDATE account SET created_at = $3, updated_at = $4 WHERE tenant_id = $1 AND id = $2",
            [
                (
                    uuid.UUID(tenant.id),
                    id_,
                    base + timedelta(seconds=i % 5),
                    base + timedelta(seconds=(i * 7) % 3),
                )
                for i, id_ in enumerate(ids)
            ],
        )
    everything = await _walk(client, tenant, {"limit": 200})
    assert len(everything) == n
    return everything


async def _walk(
    client: httpx.AsyncClient, tenant: Tenant, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every page of a listing, following next_cursor; checks the page shapes."""
    limit = params["limit"]
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(ROWS * 2 + 2):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        resp = await client.get("/v1/accounts", params=query, headers=tenant.headers)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert set(page) == {"data", "next_cursor"}
        cursor = page["next_cursor"]
        assert len(page["data"]) <= limit
        if cursor is not None:
            # Keyset pages are full until the last one, and never empty.
            assert len(page["data"]) == limit
        rows.extend(page["data"])
        if cursor is None:
            return rows
    pytest.fail("pagination did not end")


def _key(row: dict[str, Any], field: str) -> tuple[Any, uuid.UUID]:
    value = row[field]
    if field != "name":
        value = datetime.fromisoformat(value)
    return value, uuid.UUID(row["id"])


@pytest.fixture
async def accounts(
    app_client: httpx.AsyncClient, databases: TestDatabases, tenant: Tenant
) -> list[dict[str, Any]]:
    return await _make_accounts(app_client, databases, tenant, ROWS)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    page_size=st.integers(min_value=1, max_value=ROWS + 3),
    sort=st.sampled_from(SORTS),
    name=st.sampled_from([None, "Acme", "beta", "Nobody"]),
)
async def test_every_row_exactly_once_in_order(
    app_client: httpx.AsyncClient,
    tenant: Tenant,
    accounts: list[dict[str, Any]],
    page_size: int,
    sort: str,
    name: str | None,
) -> None:
    params: dict[str, Any] = {"sort": sort}
    if name is not None:
        params["name"] = name
    paged = await _walk(app_client, tenant, {**params, "limit": page_size})
    ids = [r["id"] for r in paged]
    assert len(ids) == len(set(ids)), "a row was visited twice"
    expected = {r["id"] for r in accounts if name is None or r["name"] == name}
    assert set(ids) == expected
    # The same order as one big page (the database's collation decides names).
    reference = await _walk(app_client, tenant, {**params, "limit": 200})
    assert ids == [r["id"] for r in reference]
    field = sort.lstrip("-")
    if field != "name":
        keys = [_key(r, field) for r in paged]
        assert keys == sorted(keys, reverse=sort.startswith("-"))
    else:
        # Ties on the name are broken by id in the sort's direction.
        for prev, cur in itertools.pairwise(paged):
            if prev["name"] == cur["name"]:
                assert (prev["id"] > cur["id"]) == sort.startswith("-")


async def test_rows_changing_between_pages_are_not_repeated(
    app_client: httpx.AsyncClient, databases: TestDatabases, tenant: Tenant
) -> None:
    await _make_accounts(app_client, databases, tenant, 12)
    first = await app_client.get(
        "/v1/accounts", params={"limit": 5, "sort": "name"}, headers=tenant.headers
    )
    page = first.json()
    seen = [r["id"] for r in page["data"]]
    # A row not yet visited is deleted, a new one inserted, a visited one renamed to the end.
    everything = await _walk(app_client, tenant, {"limit": 200, "sort": "name"})
    unvisited = [r["id"] for r in everything if r["id"] not in seen]
    gone = unvisited[-1]
    deleted = await app_client.delete(f"/v1/accounts/{gone}", headers=tenant.headers)
    assert deleted.status_code == 204
    added = await app_client.post("/v1/accounts", json={"name": "Zzz"}, headers=tenant.headers)
    renamed = await app_client.patch(
        f"/v1/accounts/{seen[0]}", json={"name": "Zzzz"}, headers=tenant.headers
    )
    assert renamed.status_code == 200
    rest = []
    cursor = page["next_cursor"]
    while cursor:
        resp = await app_client.get(
            "/v1/accounts",
            params={"limit": 5, "sort": "name", "cursor": cursor},
            headers=tenant.headers,
        )
        assert resp.status_code == 200, resp.text
        rest.extend(r["id"] for r in resp.json()["data"])
        cursor = resp.json()["next_cursor"]
    visited = seen + rest
    assert gone not in rest
    assert added.json()["id"] in rest  # sorts after the cursor, so it shows up
    # The renamed row moved past the cursor: seen twice is the one allowed repeat (it
    # really changed); everything else exactly once, and nothing that stayed is lost.
    assert [i for i in visited if visited.count(i) > 1] in ([], [seen[0], seen[0]])
    assert set(unvisited) - {gone} <= set(rest)


async def _cursor_for(client: httpx.AsyncClient, tenant: Tenant, params: dict[str, Any]) -> str:
    resp = await client.get("/v1/accounts", params={**params, "limit": 1}, headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    cursor: str | None = resp.json()["next_cursor"]
    assert cursor
    return cursor


async def test_cursor_reused_with_other_filter_or_sort_is_400(
    app_client: httpx.AsyncClient, databases: TestDatabases, tenant: Tenant
) -> None:
    await _make_accounts(app_client, databases, tenant, 8)
    cursor = await _cursor_for(app_client, tenant, {"sort": "name", "name": "Acme"})
    for params in (
        {"sort": "name", "name": "Beta"},
        {"sort": "name"},
        {"sort": "-name", "name": "Acme"},
        {"sort": "created_at", "name": "Acme"},
        {"name": "Acme"},  # default sort is created_at
        {"sort": "name", "name": "Acme", "domain": "acme.com"},
    ):
        resp = await app_client.get(
            "/v1/accounts", params={**params, "cursor": cursor}, headers=tenant.headers
        )
        assert_problem(resp, 400, "invalid-cursor")
    # The same query with another page size is fine.
    same = await app_client.get(
        "/v1/accounts",
        params={"sort": "name", "name": "Acme", "cursor": cursor, "limit": 1},
        headers=tenant.headers,
    )
    assert same.status_code == 200, same.text


async def test_cursor_of_another_tenant_is_refused(
    app_client: httpx.AsyncClient, databases: TestDatabases, tenant: Tenant, other_tenant: Tenant
) -> None:
    await _make_accounts(app_client, databases, tenant, 6)
    cursor = await _cursor_for(app_client, tenant, {"sort": "name"})
    resp = await app_client.get(
        "/v1/accounts", params={"sort": "name", "cursor": cursor}, headers=other_tenant.headers
    )
    # The cursor names the owner's last row and filters: refused, never a page (an empty
    # one would still tell the caller the cursor was accepted).
    assert_problem(resp, 400, "invalid-cursor")


async def test_empty_listing(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    resp = await app_client.get("/v1/accounts", params={"limit": 1}, headers=tenant.headers)
    assert resp.status_code == 200
    assert resp.json() == {"data": [], "next_cursor": None}
