"""Seeding at scale (loadtests.seed) against the real test databases and the real app."""

from __future__ import annotations

import json
import random
import stat
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from loadtests.seed import ONBOARDING_CONCURRENCY, Plan, Seeder, SeedError, generate, seed
from meridian.runtime import Runtime
from meridian.settings import Settings
from tests.fixtures.api import onboard, token_for
from tests.fixtures.shard_db import app_role, superuser
from tests.fixtures.waiting import eventually

if TYPE_CHECKING:
    # Not at module level: pytest would try to collect a class named Test*.
    from tests.fixtures.databases import TestDatabases

TABLES = ("app_user", "user_closure", "account", "contact", "opportunity", "activity")


def _prefix() -> str:
    return f"s{uuid.uuid4().hex[:8]}"


async def _counts(databases: TestDatabases, shard_id: str, tenant_id: str) -> dict[str, int]:
    """Rows of the tenant on a shard, read as the superuser (no RLS)."""
    async with superuser(databases, shard_id) as conn:
        return {
            table: await conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE tenant_id = $1",
                uuid.UUID(tenant_id),
            )
            for table in TABLES
        }


async def _all_counts(databases: TestDatabases, tenants: list[dict[str, Any]]) -> dict[str, Any]:
    return {t["slug"]: await _counts(databases, t["shard_id"], t["id"]) for t in tenants}


def _credentials(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


async def test_seed_loads_each_tenant_on_its_shard(
    settings: Settings, databases: TestDatabases, app_client: httpx.AsyncClient, tmp_path: Path
) -> None:
    out = tmp_path / "credentials.json"
    result = await seed(settings, tenants=2, contacts=50, prefix=_prefix(), out=out, progress=False)

    assert (result.onboarded, result.loaded, result.skipped) == (2, 2, 0)
    assert sorted((t.region, t.shard_id) for t in result.tenants) == [
        ("eu", "eu-1"),
        ("us", "us-1"),
    ]
    assert result.rows["contact"] == 100
    assert result.rows["account"] == 10  # a tenth of the contacts per tenant by default
    for tenant in result.tenants:
        mine = await _counts(databases, tenant.shard_id, str(tenant.id))
        assert mine == tenant.rows
        assert mine["contact"] == 50
        # About five activities per contact (3 to 7 each).
        assert 150 <= mine["activity"] <= 350
        other_shard = "eu-1" if tenant.shard_id == "us-1" else "us-1"
        assert await _counts(databases, other_shard, str(tenant.id)) == dict.fromkeys(TABLES, 0)
        # As the app role, after entering the tenant, RLS shows exactly these rows.
        async with app_role(databases, tenant.shard_id) as conn, conn.transaction():
            await conn.execute("SELECT meridian_enter_tenant($1, 1, false)", tenant.id)
            visible = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT tenant_id) AS tenants FROM contact"
            )
        assert (visible["n"], visible["tenants"]) == (50, 1)


async def test_credentials_file_gets_tokens_and_data_through_the_api(
    settings: Settings, app_client: httpx.AsyncClient, tmp_path: Path
) -> None:
    out = tmp_path / "credentials.json"
    prefix = _prefix()
    await seed(settings, tenants=2, contacts=30, prefix=prefix, out=out, progress=False)

    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it holds client secrets
    data = _credentials(out)
    assert data["prefix"] == prefix
    assert [t["slug"] for t in data["tenants"]] == [f"{prefix}-0000", f"{prefix}-0001"]
    for entry in data["tenants"]:
        assert set(entry) >= {"slug", "id", "region", "shard_id", "client_id", "client_secret"}
        assert entry["seeded"] is True
        token = await token_for(app_client, entry["client_id"], entry["client_secret"])
        headers = {"Authorization": f"Bearer {token}"}
        contacts = await app_client.get("/v1/contacts", params={"limit": 200}, headers=headers)
        assert contacts.status_code == 200
        rows = contacts.json()["data"]
        assert len(rows) == 30
        assert contacts.json()["next_cursor"] is None
        assert all(r["email"] is None or "@" in r["email"] for r in rows)
        # Opportunities sit in the tenant's default pipeline, across its stages.
        pipelines = await app_client.get("/v1/pipelines", headers=headers)
        stage_ids = {s["id"] for s in pipelines.json()["data"][0]["stages"]}
        deals = await app_client.get("/v1/opportunities", params={"limit": 200}, headers=headers)
        assert deals.status_code == 200
        assert {d["stage_id"] for d in deals.json()["data"]} <= stage_ids
        # The owners listed for the load test are the ones the records name.
        assert {r["owner_id"] for r in rows} <= set(entry["owner_ids"])
        owner = rows[0]["owner_id"]
        mine = await app_client.get("/v1/contacts", params={"owner_id": owner}, headers=headers)
        assert mine.status_code == 200
        assert mine.json()["data"]
        assert all(r["owner_id"] == owner for r in mine.json()["data"])
        # Every owner is a user of the tenant: a manager and the reps reporting to her.
        users = await app_client.get("/v1/users", params={"limit": 200}, headers=headers)
        assert users.status_code == 200, users.text
        team = {u["id"]: u for u in users.json()["data"]}
        assert set(entry["owner_ids"]) == set(team)
        managers = [u for u in team.values() if u["role"] == "sales_manager"]
        assert len(managers) == 1
        reps = [u for u in team.values() if u["id"] != managers[0]["id"]]
        assert reps
        assert all(u["manager_id"] == managers[0]["id"] for u in reps)
        assert all(u["role"] == "sales_rep" for u in reps)
    admin = data["admin"]
    admin_token = await token_for(app_client, admin["client_id"], admin["client_secret"])
    shards = await app_client.get(
        "/admin/v1/shards", headers={"Authorization": f"Bearer {admin_token}"}
    )
    assert shards.status_code == 200


async def test_reseeding_finishes_interrupted_tenants_and_duplicates_nothing(
    settings: Settings, databases: TestDatabases, app_client: httpx.AsyncClient, tmp_path: Path
) -> None:
    out = tmp_path / "credentials.json"
    prefix = _prefix()
    first = await seed(settings, tenants=1, contacts=40, prefix=prefix, out=out, progress=False)
    assert first.loaded == 1

    # A run that stopped after onboarding: tenants 1 and 2 exist but have no data yet.
    rt = await Runtime.start(settings)
    try:
        seeder = Seeder(
            rt,
            prefix=prefix,
            regions=("us", "eu"),
            plan=Plan(
                contacts=40, accounts=4, opportunities_per_account=1.5, activities_per_contact=5
            ),
            random_seed=1,
            out=out,
        )
        onboarded, created = await seeder.onboard_all(3)
    finally:
        await rt.stop()
    assert created == 2
    assert await _counts(databases, onboarded[2].ctx.shard_id, str(onboarded[2].ctx.tenant_id)) == (
        dict.fromkeys(TABLES, 0)
    )
    # Someone reads the empty tenant meanwhile (its empty list page may be cached).
    waiting = _credentials(out)["tenants"][2]
    token = await token_for(app_client, waiting["client_id"], waiting["client_secret"])
    headers = {"Authorization": f"Bearer {token}"}
    empty = await app_client.get("/v1/contacts", params={"limit": 200}, headers=headers)
    assert empty.json()["data"] == []

    resumed = await seed(settings, tenants=3, contacts=40, prefix=prefix, out=out, progress=False)
    assert (resumed.onboarded, resumed.loaded, resumed.skipped) == (0, 2, 1)

    # The load invalidated cached list pages (the bus may take a moment to deliver).
    async def all_listed() -> bool:
        listed = await app_client.get("/v1/contacts", params={"limit": 200}, headers=headers)
        return len(listed.json()["data"]) == 40

    await eventually(all_listed, what="the seeded contacts in the list")
    tenants = _credentials(out)["tenants"]
    counts = await _all_counts(databases, tenants)
    assert all(c["contact"] == 40 for c in counts.values())

    again = await seed(settings, tenants=3, contacts=40, prefix=prefix, out=out, progress=False)
    assert (again.onboarded, again.loaded, again.skipped) == (0, 0, 3)
    assert again.total_rows == 0
    assert await _all_counts(databases, tenants) == counts
    # Working clients are kept, so a load test's file stays valid across re-runs.
    assert _credentials(out)["tenants"] == tenants

    # With the file lost, a re-run cannot show the old secrets: it issues new clients.
    out.unlink()
    recovered = await seed(settings, tenants=3, contacts=40, prefix=prefix, out=out, progress=False)
    assert recovered.skipped == 3
    assert await _all_counts(databases, tenants) == counts
    for entry in _credentials(out)["tenants"]:
        assert entry["client_id"] not in {t["client_id"] for t in tenants}
        await token_for(app_client, entry["client_id"], entry["client_secret"])
        assert entry["owner_ids"]


async def test_seed_refuses_a_tenant_it_did_not_create(
    settings: Settings,
    databases: TestDatabases,
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tmp_path: Path,
) -> None:
    prefix = _prefix()
    customer = await onboard(app_client, admin_headers, region="us", slug=f"{prefix}-0000")

    with pytest.raises(SeedError, match="not created by the seeder"):
        await seed(settings, tenants=1, contacts=10, prefix=prefix, out=None, progress=False)

    assert await _counts(databases, customer.shard_id, customer.id) == dict.fromkeys(TABLES, 0)


async def test_a_tenant_that_fails_stops_the_run_and_the_file_keeps_the_others(
    settings: Settings,
    databases: TestDatabases,
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tmp_path: Path,
) -> None:
    """Tenants are onboarded and loaded several at a time; one that cannot be seeded stops
    the run: no tenant starts after it, those under way finish, and the credentials file
    lists each of them as it is in the databases."""
    prefix = _prefix()
    out = tmp_path / "credentials.json"
    customer = await onboard(app_client, admin_headers, region="eu", slug=f"{prefix}-0005")

    with pytest.raises(SeedError, match="not created by the seeder"):
        await seed(
            settings, tenants=12, contacts=5, prefix=prefix, out=out, concurrency=2, progress=False
        )

    entries = _credentials(out)["tenants"]
    indexes = {int(e["slug"].rsplit("-", 1)[1]) for e in entries}
    assert {0, 1, 2} <= indexes
    assert 5 not in indexes
    # Onboardings start in index order: those begun before the failure, no later one.
    assert max(indexes) < 5 + ONBOARDING_CONCURRENCY
    for entry in entries:
        counts = await _counts(databases, entry["shard_id"], entry["id"])
        assert counts["contact"] == (5 if entry["seeded"] else 0)
    assert await _counts(databases, customer.shard_id, customer.id) == dict.fromkeys(TABLES, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tenants": 0}, "tenants"),
        ({"contacts": 0}, "contacts"),
        ({"prefix": "Not A Slug"}, "prefix"),
        ({"regions": ()}, "region"),
    ],
)
async def test_seed_rejects_bad_arguments(
    settings: Settings, kwargs: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {"tenants": 1, "contacts": 1, "progress": False, **kwargs}
    with pytest.raises(SeedError, match=message):
        await seed(settings, **arguments)


def test_generated_data_is_deterministic_for_a_seed() -> None:
    tenant_id = uuid.uuid4()
    stages = [
        {"pipeline_id": uuid.uuid4(), "id": uuid.uuid4(), "kind": kind}
        for kind in ("open", "open", "open", "open", "won", "lost")
    ]
    owners = [uuid.uuid4() for _ in range(5)]
    plan = Plan(contacts=200, accounts=20, opportunities_per_account=2, activities_per_contact=5)
    now = datetime(2026, 6, 1, tzinfo=UTC)

    def content(seed_value: int) -> tuple[Any, ...]:
        rows = generate(random.Random(seed_value), tenant_id, "eu", stages, owners, plan, now)
        return (
            [r[2:4] for r in rows["account"]],  # name, domain
            [r[2:7] for r in rows["contact"]],  # names, email, phone, title
            [r[3:6] for r in rows["opportunity"]],  # name, amount, currency
            [(r[2], r[3], r[5]) for r in rows["activity"]],  # type, subject, occurred_at
        )

    assert content(7) == content(7)
    assert content(7) != content(8)
    rows = generate(random.Random(7), tenant_id, "eu", stages, owners, plan, now)
    assert len(rows["contact"]) == 200
    assert len(rows["account"]) == 20
    emails = [r[4] for r in rows["contact"] if r[4] is not None]
    assert len(emails) == len(set(emails))
    assert all(r[5] <= now for r in rows["activity"])
    contact_accounts = {r[1]: r[7] for r in rows["contact"]}
    # An activity records its contact's account, as the API does.
    assert all(r[7] == contact_accounts[r[6]] for r in rows["activity"])
