"""Seeding at scale (loadtests.seed) against the real test databases and the real app."""

from __future__ import annotations

import json
import random
import stat
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from loadtests.seed import (
    ONBOARDING_CONCURRENCY,
    SCORING_RULES,
    Plan,
    Seeder,
    SeedError,
    generate,
    seed,
)
from meridian.leads.scoring import evaluate
from meridian.runtime import Runtime
from meridian.settings import Settings
from tests.fixtures.api import onboard, token_for
from tests.fixtures.shard_db import app_role, superuser
from tests.fixtures.waiting import eventually

if TYPE_CHECKING:
    # Not at module level: pytest would try to collect a class named Test*.
    from tests.fixtures.databases import TestDatabases

TABLES = (
    "app_user",
    "user_closure",
    "field_definition",
    "account",
    "custom_value",
    "contact",
    "opportunity",
    "lead_scoring_rule",
    "lead",
    "case",
    "activity",
)


def _prefix() -> str:
    return f"s{uuid.uuid4().hex[:8]}"


async def _counts(databases: TestDatabases, shard_id: str, tenant_id: str) -> dict[str, int]:
    """Rows of the tenant on a shard, read as the superuser (no RLS)."""
    async with superuser(databases, shard_id) as conn:
        return {
            table: await conn.fetchval(
                f'SELECT count(*) FROM "{table}" WHERE tenant_id = $1',  # "case": a keyword
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
    assert result.rows["lead"] == 50  # half of them
    assert result.rows["case"] == 20  # a fifth
    assert "50 lead, 20 case" in result.summary()
    for tenant in result.tenants:
        mine = await _counts(databases, tenant.shard_id, str(tenant.id))
        assert mine == tenant.rows
        assert mine["contact"] == 50
        assert 5 <= mine["lead_scoring_rule"] <= 8
        assert mine["field_definition"] == 3
        assert 2 <= len(tenant.agent_ids) <= 5
        assert tenant.support_client is not None
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
        # The accounts' custom fields: defined, carried by the records, and filtered through
        # the index the seed filled as the API fills it.
        fields = await app_client.get("/v1/objects/accounts/fields", headers=headers)
        assert [f["name"] for f in fields.json()["data"]] == ["segment", "arr", "partner"]
        accounts = await app_client.get("/v1/accounts", params={"limit": 200}, headers=headers)
        strategic = {
            a["id"] for a in accounts.json()["data"] if a["custom"].get("segment") == "Strategic"
        }
        found = await app_client.get(
            "/v1/accounts",
            params={"limit": 200, "filter": "custom.segment[eq]:Strategic"},
            headers=headers,
        )
        assert {a["id"] for a in found.json()["data"]} == strategic
        by_arr = await app_client.get(
            "/v1/accounts", params={"limit": 200, "sort": "-custom.arr"}, headers=headers
        )
        arr = [Decimal(a["custom"]["arr"]) for a in by_arr.json()["data"] if "arr" in a["custom"]]
        assert arr == sorted(arr, reverse=True)
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
        # Every owner is a user of the tenant: a manager and the reps reporting to her;
        # the service desk's agents are users too, listed apart.
        users = await app_client.get("/v1/users", params={"limit": 200}, headers=headers)
        assert users.status_code == 200, users.text
        everyone = {u["id"]: u for u in users.json()["data"]}
        agents = {i: u for i, u in everyone.items() if u["role"] == "support_agent"}
        assert set(entry["agent_ids"]) == set(agents)
        assert all(u["manager_id"] is None for u in agents.values())
        team = {i: u for i, u in everyone.items() if i not in agents}
        assert set(entry["owner_ids"]) == set(team)
        managers = [u for u in team.values() if u["role"] == "sales_manager"]
        assert len(managers) == 1
        reps = [u for u in team.values() if u["id"] != managers[0]["id"]]
        assert reps
        assert all(u["manager_id"] == managers[0]["id"] for u in reps)
        assert all(u["role"] == "sales_rep" for u in reps)
        await _check_leads_and_cases(app_client, headers, entry)
    admin = data["admin"]
    admin_token = await token_for(app_client, admin["client_id"], admin["client_secret"])
    shards = await app_client.get(
        "/admin/v1/shards", headers={"Authorization": f"Bearer {admin_token}"}
    )
    assert shards.status_code == 200


async def _check_leads_and_cases(
    client: httpx.AsyncClient, headers: dict[str, str], entry: dict[str, Any]
) -> None:
    """A seeded tenant's leads and cases as the API shows them (decrypted, scored), and
    its support desk's client acting with the support agent's role."""
    listed = await client.get("/v1/leads", params={"limit": 200, "sort": "-score"}, headers=headers)
    assert listed.status_code == 200, listed.text
    leads = listed.json()["data"]
    assert len(leads) == 15
    scores = [lead["score"] for lead in leads]
    assert scores == sorted(scores, reverse=True)
    assert {lead["status"] for lead in leads} >= {"new", "working", "qualified", "converted"}
    assert all(lead["owner_id"] is None or lead["owner_id"] in entry["owner_ids"] for lead in leads)
    # A converted lead became a seeded contact: the same person, the same e-mail, both
    # decrypted by the API from what the seeder sealed.
    converted = next(lead for lead in leads if lead["status"] == "converted")
    lead = (await client.get(f"/v1/leads/{converted['id']}", headers=headers)).json()
    contact = (
        await client.get(f"/v1/contacts/{lead['converted_contact_id']}", headers=headers)
    ).json()
    assert "@" in lead["email"]
    assert lead["email"] == contact["email"]
    assert (lead["last_name"], lead["phone"]) == (contact["last_name"], contact["phone"])
    assert lead["converted_account_id"] == contact["account_id"]
    assert lead["converted_at"] is not None
    assert sum(d["points"] for d in lead["score_details"]) == lead["score"]
    # Its e-mail's blind index finds it.
    found = await client.get("/v1/leads", params={"email": lead["email"]}, headers=headers)
    assert lead["id"] in [row["id"] for row in found.json()["data"]]
    timeline = await client.get(f"/v1/leads/{lead['id']}/timeline", headers=headers)
    assert timeline.status_code == 200
    assert timeline.json()["data"]  # 2 to 6 activities before it was converted
    rules = await client.get("/v1/lead-scoring/rules", headers=headers)
    assert len(rules.json()["data"]) >= 5

    listed = await client.get("/v1/cases", params={"limit": 200}, headers=headers)
    cases = listed.json()["data"]
    assert len(cases) == 6
    assert {c["owner_id"] for c in cases} - {None} <= set(entry["agent_ids"])
    with_contact = next(c for c in cases if c["contact_id"] is not None)
    case = (await client.get(f"/v1/cases/{with_contact['id']}", headers=headers)).json()
    contact = (await client.get(f"/v1/contacts/{case['contact_id']}", headers=headers)).json()
    assert case["account_id"] == contact["account_id"]
    done = [c for c in cases if c["status"] in ("resolved", "closed")]
    assert done
    assert all(c["resolution"] and c["resolved_at"] for c in done)
    assert all(c["closed_at"] for c in done if c["status"] == "closed")

    # The support desk's client works cases as a support agent: it sees the queue, and
    # may neither delete a case nor create a lead.
    desk = entry["support_client"]
    token = await token_for(client, desk["client_id"], desk["client_secret"])
    agent = {"Authorization": f"Bearer {token}"}
    overdue = await client.get(
        "/v1/cases", params={"overdue": "true", "sort": "due_at"}, headers=agent
    )
    assert overdue.status_code == 200, overdue.text
    due = [c["due_at"] for c in overdue.json()["data"]]
    assert due == sorted(due)
    assert (await client.get(f"/v1/contacts/{contact['id']}", headers=agent)).json()["email"] == (
        contact["email"]
    )
    gone = await client.delete(f"/v1/cases/{case['id']}", headers=agent)
    assert gone.status_code == 403
    lead_made = await client.post("/v1/leads", json={"last_name": "Nope"}, headers=agent)
    assert lead_made.status_code == 403


async def test_seeded_leads_are_scored_as_the_api_scores_them(
    settings: Settings, databases: TestDatabases, tmp_path: Path
) -> None:
    """Stored scores are what ``meridian.leads.scoring.evaluate`` gives for each lead's
    row, activity counts and the tenant's rules (what the API would store); converted
    leads and cases are consistent with the records they name."""
    result = await seed(
        settings, tenants=1, contacts=80, prefix=_prefix(), out=None, progress=False
    )
    tenant = result.tenants[0]
    async with superuser(databases, tenant.shard_id) as conn:
        rules = [
            {**r, "condition": json.loads(r["condition"])}
            for r in await conn.fetch(
                "SELECT id, name, points, condition, active FROM lead_scoring_rule "
                "WHERE tenant_id = $1",
                tenant.id,
            )
        ]
        leads = await conn.fetch("SELECT * FROM lead WHERE tenant_id = $1", tenant.id)
        counts: dict[uuid.UUID, dict[str, int]] = {}
        for row in await conn.fetch(
            "SELECT lead_id, type, count(*) AS n FROM activity "
            "WHERE tenant_id = $1 AND lead_id IS NOT NULL GROUP BY lead_id, type",
            tenant.id,
        ):
            counts.setdefault(row["lead_id"], {})[row["type"]] = row["n"]
        latest = dict(
            await conn.fetch(
                "SELECT lead_id, max(occurred_at) FROM activity "
                "WHERE tenant_id = $1 AND lead_id IS NOT NULL GROUP BY lead_id",
                tenant.id,
            )
        )
        contacts = {
            r["id"]: r
            for r in await conn.fetch(
                "SELECT id, account_id FROM contact WHERE tenant_id = $1", tenant.id
            )
        }
        cases = await conn.fetch('SELECT * FROM "case" WHERE tenant_id = $1', tenant.id)

    names = {r["name"] for r in rules}
    assert {"Referred", "Engaged"} <= names <= {name for name, _, _ in SCORING_RULES}
    # No rule tests the status: a converted lead keeps the score it was converted with.
    assert all(r["condition"].get("field") != "status" for r in rules)
    assert len(leads) == 40
    assert any(lead["score"] > 0 for lead in leads)
    for lead in leads:
        score, details = evaluate(dict(lead), counts.get(lead["id"], {}), rules)
        assert (lead["score"], json.loads(lead["score_details"])) == (score, details)
    converted = [lead for lead in leads if lead["status"] == "converted"]
    assert converted
    for lead in converted:
        contact = contacts[lead["converted_contact_id"]]
        assert contact["account_id"] == lead["converted_account_id"]
        assert lead["email_enc"] is not None  # the contact's address (checked via the API)
        assert lead["created_at"] < lead["converted_at"]
        assert latest[lead["id"]] <= lead["converted_at"]
    assert all(lead["converted_at"] is None for lead in leads if lead["status"] != "converted")

    assert len(cases) == 16
    for case in cases:
        if case["contact_id"] is not None:
            assert case["account_id"] == contacts[case["contact_id"]]["account_id"]
        assert case["owner_id"] is None or case["owner_id"] in tenant.agent_ids
        done = case["status"] in ("resolved", "closed")
        assert (case["resolution"] is not None, case["resolved_at"] is not None) == (done, done)
        assert (case["closed_at"] is not None) == (case["status"] == "closed")
        assert case["created_at"] < case["due_at"]


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
    for entry, before in zip(_credentials(out)["tenants"], tenants, strict=True):
        assert entry["client_id"] not in {t["client_id"] for t in tenants}
        await token_for(app_client, entry["client_id"], entry["client_secret"])
        assert entry["owner_ids"]
        # Agents are found in the tenant again; the support desk gets a new client too.
        assert sorted(entry["agent_ids"]) == sorted(before["agent_ids"])
        desk = entry["support_client"]
        assert desk["client_id"] != before["support_client"]["client_id"]
        await token_for(app_client, desk["client_id"], desk["client_secret"])


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

    agents = [uuid.uuid4() for _ in range(3)]

    def content(seed_value: int) -> tuple[Any, ...]:
        rows = generate(
            random.Random(seed_value), tenant_id, "eu", stages, owners, plan, now, agents
        )
        return (
            [r[2:4] for r in rows["account"]],  # name, domain
            [r[2:7] for r in rows["contact"]],  # names, email, phone, title
            [r[3:6] for r in rows["opportunity"]],  # name, amount, currency
            [(r[2], r[3], r[5]) for r in rows["activity"]],  # type, subject, occurred_at
            [r[2:6] for r in rows["lead_scoring_rule"]],  # name, points, condition, active
            # fields, score, the rules it met (ids are not deterministic), converted_at
            [(*r[2:12], [d["name"] for d in r[12]], r[13]) for r in rows["lead"]],
            [r[2:7] + r[10:14] for r in rows["case"]],  # subject ... origin, due ... closed
        )

    assert content(7) == content(7)
    assert content(7) != content(8)
    rows = generate(random.Random(7), tenant_id, "eu", stages, owners, plan, now, agents)
    assert len(rows["contact"]) == 200
    assert len(rows["account"]) == 20
    assert len(rows["lead"]) == 100
    assert len(rows["case"]) == 40
    emails = [r[4] for r in rows["contact"] if r[4] is not None]
    assert len(emails) == len(set(emails))
    assert all(r[5] <= now for r in rows["activity"])
    contact_accounts = {r[1]: r[7] for r in rows["contact"]}
    # An activity records its contact's account, as the API does (a case's is its
    # contact's too); one on a lead has neither.
    assert all(r[7] == contact_accounts[r[6]] for r in rows["activity"] if r[6] is not None)
    on_leads = [r for r in rows["activity"] if r[11] is not None]
    on_cases = [r for r in rows["activity"] if r[12] is not None]
    assert on_leads
    assert on_cases
    assert all(r[6] is None and r[7] is None for r in on_leads)
    # Statuses are dealt out in their shares, so every kind is there.
    assert {r[9] for r in rows["lead"]} == {
        "new", "working", "nurturing", "qualified", "unqualified", "converted",
    }  # fmt: skip
    assert {r[4] for r in rows["case"]} == {
        "new", "open", "pending", "on_hold", "resolved", "closed",
    }  # fmt: skip
    assert {r[9] for r in rows["case"]} - {None} <= set(agents)
