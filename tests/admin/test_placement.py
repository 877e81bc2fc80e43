"""Honest placement: a dedicated shard holds one tenant, region placement never picks it,
and onboarding says how each tenant was placed."""

from __future__ import annotations

import uuid

import httpx

from meridian.operations import add_shard
from meridian.settings import Settings
from sharding.engines import ShardInfo
from sharding.placement import choose_shard
from tests.fixtures.databases import APP_ROLE, TestDatabases, dsn, recreate_database
from tests.fixtures.problems import assert_problem


async def add_dedicated_shard(databases: TestDatabases, settings: Settings, name: str) -> str:
    """A new, migrated shard database in region us, registered as dedicated (named under
    the run's prefix, so the session drops it); returns the database's name."""
    database = f"{databases.prefix}_{name.replace('-', '_')}"
    await recreate_database(database)
    await add_shard(
        settings,
        shard_id=name,
        region="us",
        dsn=dsn(database, APP_ROLE),
        admin_dsn=dsn(database),
        dedicated=True,
    )
    return database


def _slug() -> str:
    return f"p-{uuid.uuid4().hex[:10]}"


async def test_a_dedicated_shard_takes_one_tenant_and_says_so(
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    databases: TestDatabases,
    settings: Settings,
) -> None:
    shard_id = f"ded-{uuid.uuid4().hex[:6]}"
    await add_dedicated_shard(databases, settings, shard_id)

    first = await app_client.post(
        "/admin/v1/tenants",
        json={"slug": _slug(), "name": "Big Co", "shard_id": shard_id},
        headers=admin_headers,
    )
    assert first.status_code == 201, first.text
    assert (first.json()["shard_id"], first.json()["placement"]) == (shard_id, "dedicated")

    second = await app_client.post(
        "/admin/v1/tenants",
        json={"slug": _slug(), "name": "Another Co", "shard_id": shard_id},
        headers=admin_headers,
    )
    assert_problem(second, 409, "dedicated-shard-occupied", shard_id)

    # Placement by region passes it by, although it is the emptiest shard of the region.
    for _ in range(3):
        placed = await app_client.post(
            "/admin/v1/tenants",
            json={"slug": _slug(), "name": "Regional", "region": "us"},
            headers=admin_headers,
        )
        assert placed.status_code == 201, placed.text
        assert placed.json()["placement"] == "region"
        assert placed.json()["shard_id"] != shard_id

    shards = (await app_client.get("/admin/v1/shards", headers=admin_headers)).json()["data"]
    by_id = {s["id"]: s for s in shards}
    assert by_id[shard_id]["dedicated"] is True
    assert by_id[shard_id]["tenant_count"] == 1
    assert by_id["us-1"]["dedicated"] is False


async def test_a_named_shared_shard_takes_many_tenants(
    app_client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    for _ in range(2):
        placed = await app_client.post(
            "/admin/v1/tenants",
            json={"slug": _slug(), "name": "Named", "shard_id": "eu-1"},
            headers=admin_headers,
        )
        assert placed.status_code == 201, placed.text
        assert (placed.json()["shard_id"], placed.json()["placement"]) == ("eu-1", "shard")


async def test_a_replay_says_how_the_tenant_was_placed(
    app_client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    body = {"slug": _slug(), "name": "Replayed", "region": "eu"}
    headers = {**admin_headers, "Idempotency-Key": f"place-{body['slug']}"}
    first = await app_client.post("/admin/v1/tenants", json=body, headers=headers)
    again = await app_client.post("/admin/v1/tenants", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true"
    assert first.json()["placement"] == again.json()["placement"] == "region"


def test_region_placement_never_picks_a_dedicated_shard() -> None:
    shards = [
        ShardInfo("us-big", "us", "dsn", "active", capacity=1000, dedicated=True),
        ShardInfo("us-1", "us", "dsn", "active", capacity=100),
    ]
    # The dedicated shard is empty and far bigger; the shared one is nearly full.
    assert choose_shard(shards, {"us-1": 99}, "us").id == "us-1"
