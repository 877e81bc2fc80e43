"""``Idempotency-Key`` on POST /v1/accounts: a retry replays the first response, never
creates a second row, and a key cannot be reused for another request."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.fixtures.api import Tenant
from tests.fixtures.engines import *  # noqa: F403 - every test here runs on both shard engines
from tests.fixtures.engines import Platform
from tests.fixtures.problems import assert_problem


def _key() -> str:
    return f"key-{uuid.uuid4()}"


async def _post(
    client: httpx.AsyncClient, tenant: Tenant, body: dict[str, Any], key: str | None
) -> httpx.Response:
    headers = dict(tenant.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post("/v1/accounts", json=body, headers=headers)


async def _names(client: httpx.AsyncClient, tenant: Tenant, name: str) -> list[dict[str, Any]]:
    resp = await client.get(
        "/v1/accounts", params={"name": name, "limit": 200}, headers=tenant.headers
    )
    assert resp.status_code == 200, resp.text
    data: list[dict[str, Any]] = resp.json()["data"]
    return data


def _replay_view(resp: httpx.Response) -> tuple[int, Any, str, str]:
    return resp.status_code, resp.json(), resp.headers["location"], resp.headers["etag"]


async def test_same_key_same_body_replays(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    key = _key()
    body = {"name": "Idem", "domain": "idem.example"}
    first = await _post(app_client, tenant, body, key)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    for _ in range(3):
        again = await _post(app_client, tenant, body, key)
        assert _replay_view(again) == _replay_view(first)
        assert again.headers["idempotent-replayed"] == "true"
    assert [r["id"] for r in await _names(app_client, tenant, "Idem")] == [first.json()["id"]]


async def test_same_key_after_the_record_changed_still_replays_the_first_response(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    key = _key()
    first = await _post(app_client, tenant, {"name": "Orig"}, key)
    record_id = first.json()["id"]
    patched = await app_client.patch(
        f"/v1/accounts/{record_id}", json={"name": "Changed"}, headers=tenant.headers
    )
    assert patched.status_code == 200
    again = await _post(app_client, tenant, {"name": "Orig"}, key)
    assert again.status_code == 201
    assert again.json() == first.json()
    assert await _names(app_client, tenant, "Orig") == []


@pytest.mark.parametrize(
    "second",
    [
        {"name": "Other"},
        {"name": "Idem2", "domain": "x.example"},
        {"name": "Idem2", "owner_id": str(uuid.uuid4())},
    ],
)
async def test_same_key_different_body_is_422(
    app_client: httpx.AsyncClient, tenant: Tenant, second: dict[str, Any]
) -> None:
    key = _key()
    first = await _post(app_client, tenant, {"name": "Idem2"}, key)
    assert first.status_code == 201
    resp = await _post(app_client, tenant, second, key)
    assert_problem(resp, 422, "idempotency-key-reused")
    assert await _names(app_client, tenant, second["name"]) == (
        [first.json()] if second["name"] == "Idem2" else []
    )


async def test_equivalent_body_in_another_key_order_replays(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    key = _key()
    first = await app_client.post(
        "/v1/accounts",
        content=b'{"name": "Order", "domain": "order.example"}',
        headers={**tenant.headers, "Idempotency-Key": key, "Content-Type": "application/json"},
    )
    again = await app_client.post(
        "/v1/accounts",
        content=b'{"domain": "order.example",   "name": "Order"}',
        headers={**tenant.headers, "Idempotency-Key": key, "Content-Type": "application/json"},
    )
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"


async def test_concurrent_duplicates_create_one_row(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    key = _key()
    body = {"name": "Race"}
    responses = await asyncio.gather(*(_post(app_client, tenant, body, key) for _ in range(20)))
    # Identical as JSON (a replay comes from JSONB, so key order may differ).
    first = _replay_view(responses[0])
    assert all(_replay_view(r) == first for r in responses), [r.text for r in responses]
    assert responses[0].status_code == 201
    replayed = [r.headers.get("idempotent-replayed") for r in responses]
    assert replayed.count(None) == 1  # exactly one request did the work
    rows = await _names(app_client, tenant, "Race")
    assert [r["id"] for r in rows] == [responses[0].json()["id"]]


async def test_concurrent_different_keys_create_one_row_each(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    responses = await asyncio.gather(
        *(_post(app_client, tenant, {"name": "Many"}, _key()) for _ in range(10))
    )
    assert all(r.status_code == 201 for r in responses)
    assert len({r.json()["id"] for r in responses}) == 10
    assert len(await _names(app_client, tenant, "Many")) == 10


async def test_keys_are_per_tenant(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    key = _key()
    mine = await _post(app_client, tenant, {"name": "Shared key"}, key)
    theirs = await _post(app_client, other_tenant, {"name": "Shared key"}, key)
    assert mine.status_code == theirs.status_code == 201
    assert "idempotent-replayed" not in theirs.headers
    assert theirs.json()["id"] != mine.json()["id"]
    # And a different body under the same key is no conflict across tenants either.
    other = await _post(app_client, other_tenant, {"name": "Different"}, _key())
    assert other.status_code == 201
    assert [r["id"] for r in await _names(app_client, tenant, "Shared key")] == [mine.json()["id"]]


async def test_without_a_key_every_post_creates(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    for _ in range(2):
        assert (await _post(app_client, tenant, {"name": "Nokey"}, None)).status_code == 201
    assert len(await _names(app_client, tenant, "Nokey")) == 2


@pytest.mark.parametrize("key", ["x" * 256, "x" * 5000, ""])
async def test_bad_key_is_400(app_client: httpx.AsyncClient, tenant: Tenant, key: str) -> None:
    resp = await _post(app_client, tenant, {"name": "Badkey"}, key)
    assert_problem(resp, 422, "validation")  # outside the header's declared format
    assert await _names(app_client, tenant, "Badkey") == []


async def test_longest_key_is_accepted(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    key = "k" * 255
    first = await _post(app_client, tenant, {"name": "Longkey"}, key)
    again = await _post(app_client, tenant, {"name": "Longkey"}, key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()


async def test_failed_request_does_not_burn_the_key(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    key = _key()
    # A parent that does not exist: the insert fails and the transaction (key row
    # included) rolls back, so the same key and body may be retried.
    missing_parent = {"name": "Child", "parent_id": str(uuid.uuid4())}
    failed = await _post(app_client, tenant, missing_parent, key)
    assert failed.status_code == 422, failed.text
    again = await _post(app_client, tenant, missing_parent, key)
    assert again.status_code == 422, again.text
    assert "idempotent-replayed" not in again.headers
    ok = await _post(app_client, tenant, {"name": "Child"}, _key())
    assert ok.status_code == 201


async def test_an_expired_key_is_taken_over(
    app_client: httpx.AsyncClient, tenant: Tenant, platform: Platform
) -> None:
    key = _key()
    first = await _post(app_client, tenant, {"name": "Before expiry"}, key)
    assert first.status_code == 201, first.text
    async with platform.superuser(tenant.shard_id) as conn:
        await conn.execute(
            "UPDATE idempotency_key SET created_at = now() - interval '25 hours'"
            " WHERE tenant_id = $1 AND key = $2",
            uuid.UUID(tenant.id),
            key,
        )
    # Another request under the expired key: a new record, the key's clock restarted.
    taken = await _post(app_client, tenant, {"name": "After expiry"}, key)
    assert taken.status_code == 201, taken.text
    assert "idempotent-replayed" not in taken.headers
    assert taken.json()["id"] != first.json()["id"]
    async with platform.superuser(tenant.shard_id) as conn:
        age = await conn.fetchval(
            "SELECT now() - created_at FROM idempotency_key WHERE tenant_id = $1 AND key = $2",
            uuid.UUID(tenant.id),
            key,
        )
    assert age < timedelta(hours=1)
    again = await _post(app_client, tenant, {"name": "After expiry"}, key)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == taken.json()
