"""The API on a Citus shard: onboarding, idempotent creation, reads by id, lists,
record scope with user tokens, search by email, timelines, shares, users and roles,
with tenants kept apart. Every tenant statement runs on one worker: the app role's
multi-shard statements fail on this cluster (see conftest), and a by-id read's plan
names one task."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.citus.conftest import CitusApi
from tests.fixtures.api import Tenant
from tests.fixtures.databases import APP_ROLE
from tests.fixtures.users import PASSWORD, new_user, sign_in

pytestmark = pytest.mark.slow

Headers = dict[str, str]


async def created(client: httpx.AsyncClient, path: str, headers: Headers, **body: Any) -> str:
    resp = await client.post(path, json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    record_id: str = resp.json()["id"]
    return record_id


async def walk(client: httpx.AsyncClient, path: str, headers: Headers, limit: int) -> list[str]:
    """The ids of every page of a listing, in order, following next_cursor."""
    ids: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        resp = await client.get(path, params=params, headers=headers)
        assert resp.status_code == 200, resp.text
        ids += [r["id"] for r in resp.json()["data"]]
        cursor = resp.json()["next_cursor"]
        if cursor is None:
            return ids


async def member(api: CitusApi, tenant: Tenant, **kw: Any) -> tuple[str, Headers]:
    """A new user of the tenant and the headers of their user token."""
    made = await new_user(api.client, tenant, password=PASSWORD, **kw)
    return made["id"], await sign_in(api.client, tenant, made["email"])


async def test_onboarding_and_an_idempotent_post(citus_api: CitusApi) -> None:
    client = citus_api.client
    tenant = await citus_api.onboard()
    # Onboarding seeded the default pipeline after admitting the tenant.
    pipelines = await client.get("/v1/pipelines", headers=tenant.headers)
    assert pipelines.status_code == 200, pipelines.text
    assert [p["is_default"] for p in pipelines.json()["data"]] == [True]

    headers = {**tenant.headers, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = await client.post("/v1/accounts", json={"name": "Acme"}, headers=headers)
    assert first.status_code == 201, first.text
    again = await client.post("/v1/accounts", json={"name": "Acme"}, headers=headers)
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    reused = await client.post("/v1/accounts", json={"name": "Other"}, headers=headers)
    assert reused.status_code == 422
    listed = await client.get("/v1/accounts", headers=tenant.headers)
    assert [a["id"] for a in listed.json()["data"]] == [first.json()["id"]]
    # Expired, the key is taken over (the upsert's DO UPDATE branch).
    conn = await asyncpg.connect(citus_api.cluster.url())
    try:
        await conn.execute(
            "UPDATE idempotency_key SET created_at = $2 WHERE tenant_id = $1",
            uuid.UUID(tenant.id),
            datetime.now(UTC) - timedelta(hours=25),
        )
    finally:
        await conn.close()
    taken = await client.post("/v1/accounts", json={"name": "Other"}, headers=headers)
    assert taken.status_code == 201, taken.text
    assert "idempotent-replayed" not in taken.headers


async def test_reads_by_id_lists_and_updates_stay_inside_the_tenant(citus_api: CitusApi) -> None:
    client = citus_api.client
    tenant, other = await citus_api.onboard(), await citus_api.onboard()
    ids = [
        await created(client, "/v1/accounts", tenant.headers, name=f"Account {n}") for n in range(5)
    ]
    for record_id in ids:
        got = await client.get(f"/v1/accounts/{record_id}", headers=tenant.headers)
        assert got.status_code == 200, got.text
        assert got.json()["id"] == record_id
        foreign = await client.get(f"/v1/accounts/{record_id}", headers=other.headers)
        assert foreign.status_code == 404
    assert sorted(await walk(client, "/v1/accounts", tenant.headers, limit=2)) == sorted(ids)
    assert await walk(client, "/v1/accounts", other.headers, limit=2) == []

    path = f"/v1/accounts/{ids[0]}"
    etag = (await client.get(path, headers=tenant.headers)).headers["etag"]
    changed = await client.patch(
        path, json={"name": "Renamed"}, headers={**tenant.headers, "If-Match": etag}
    )
    assert changed.status_code == 200, changed.text
    stale = await client.patch(
        path, json={"name": "Again"}, headers={**tenant.headers, "If-Match": etag}
    )
    assert stale.status_code == 412
    assert (await client.delete(path, headers=other.headers)).status_code == 404
    assert (await client.get(path, headers=tenant.headers)).json()["name"] == "Renamed"


async def test_pipelines_opportunities_and_cascades(citus_api: CitusApi) -> None:
    client = citus_api.client
    tenant = await citus_api.onboard()
    h = tenant.headers
    pipeline = await client.post(
        "/v1/pipelines",
        json={
            "name": "Enterprise",
            "stages": [
                {"name": "Qualify", "probability": 10},
                {"name": "Won", "probability": 100, "kind": "won"},
            ],
        },
        headers=h,
    )
    assert pipeline.status_code == 201, pipeline.text
    pipeline_id = pipeline.json()["id"]
    stages = await client.get(f"/v1/pipelines/{pipeline_id}/stages", headers=h)
    qualify, won = (s["id"] for s in stages.json()["data"])
    # A stage inserted first shifts the others (several rows changed in one statement).
    added = await client.post(
        f"/v1/pipelines/{pipeline_id}/stages",
        json={"name": "Lead", "probability": 5, "position": 0},
        headers=h,
    )
    assert added.status_code == 201, added.text
    account = await created(client, "/v1/accounts", h, name="Buyer")
    default_deal = await created(
        client, "/v1/opportunities", h, account_id=account, name="Default", currency="EUR"
    )
    deal = await created(
        client,
        "/v1/opportunities",
        h,
        account_id=account,
        name="Big",
        currency="EUR",
        amount="1000.00",
        pipeline_id=pipeline_id,
        stage_id=qualify,
    )
    moved = await client.patch(f"/v1/opportunities/{deal}", json={"stage_id": won}, headers=h)
    assert moved.status_code == 200, moved.text
    await created(
        client,
        "/v1/activities",
        h,
        type="meeting",
        subject="Kick-off",
        occurred_at="2026-02-01T09:00:00Z",
        opportunity_id=deal,
    )
    listed = await client.get("/v1/opportunities", params={"pipeline_id": pipeline_id}, headers=h)
    assert listed.status_code == 200, listed.text
    assert [o["id"] for o in listed.json()["data"]] == [deal]
    assert default_deal != deal
    # Deleting the deal cascades to its activities (a colocated foreign key).
    assert (await client.delete(f"/v1/opportunities/{deal}", headers=h)).status_code == 204
    timeline = await client.get(f"/v1/accounts/{account}/timeline", headers=h)
    assert timeline.json()["data"] == []


async def test_a_read_by_id_runs_on_one_shard(citus_api: CitusApi) -> None:
    tenant = await citus_api.onboard()
    account = await created(citus_api.client, "/v1/accounts", tenant.headers, name="Routed")
    conn = await asyncpg.connect(citus_api.cluster.url(APP_ROLE))
    try:
        async with conn.transaction(readonly=True):
            await conn.execute(f"SELECT meridian_enter_tenant('{tenant.id}', 1, false)")
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    "EXPLAIN SELECT * FROM account WHERE tenant_id = $1 AND id = $2",
                    uuid.UUID(tenant.id),
                    uuid.UUID(account),
                )
            )
    finally:
        await conn.close()
    assert "Task Count: 1" in plan, plan


async def test_the_app_roles_fan_out_fails_here(citus_api: CitusApi) -> None:
    """The guard the other tests run under: a statement of the app role that would run
    on several shards (here one that leaves the tenant filter to RLS) is an error."""
    tenant = await citus_api.onboard()
    conn = await asyncpg.connect(citus_api.cluster.url(APP_ROLE))
    try:
        async with conn.transaction(readonly=True):
            await conn.execute(f"SELECT meridian_enter_tenant('{tenant.id}', 1, false)")
            with pytest.raises(asyncpg.PostgresError, match="multi-task query"):
                await conn.fetchval("SELECT count(*) FROM account")
    finally:
        await conn.close()


async def test_record_scope_shares_search_and_timelines_for_users(citus_api: CitusApi) -> None:
    client = citus_api.client
    tenant = await citus_api.onboard()
    rep, rep_headers = await member(citus_api, tenant)  # sales_rep
    _, peer_headers = await member(citus_api, tenant)
    mine = await created(
        client, "/v1/contacts", rep_headers, last_name="Mine", email="mine@example.test"
    )
    theirs = await created(
        client, "/v1/contacts", peer_headers, last_name="Theirs", email="theirs@example.test"
    )
    # A sales rep sees their own records only.
    assert await walk(client, "/v1/contacts", rep_headers, limit=1) == [mine]
    assert (await client.get(f"/v1/contacts/{theirs}", headers=rep_headers)).status_code == 404
    assert (await client.get(f"/v1/contacts/{mine}", headers=rep_headers)).status_code == 200
    # Search by email (a blind index): an exact, normalised match, within the scope.
    found = await client.get(
        "/v1/contacts", params={"email": " Theirs@Example.TEST "}, headers=tenant.headers
    )
    assert [c["id"] for c in found.json()["data"]] == [theirs]
    hidden = await client.get(
        "/v1/contacts", params={"email": "theirs@example.test"}, headers=rep_headers
    )
    assert hidden.json()["data"] == []

    shared = await client.post(
        f"/v1/contacts/{theirs}/shares", json={"user_id": rep}, headers=peer_headers
    )
    assert shared.status_code == 201, shared.text
    assert sorted(await walk(client, "/v1/contacts", rep_headers, limit=1)) == sorted(
        [mine, theirs]
    )
    assert (await client.get(f"/v1/contacts/{theirs}", headers=rep_headers)).status_code == 200
    shares = await client.get(f"/v1/contacts/{theirs}/shares", headers=peer_headers)
    assert [s["user_id"] for s in shares.json()["data"]] == [rep]

    activities = [
        await created(
            client,
            "/v1/activities",
            rep_headers,
            type="call",
            subject=f"Call {n}",
            occurred_at=f"2026-01-0{n + 1}T10:00:00Z",
            contact_id=theirs,
        )
        for n in range(3)
    ]
    timeline = await walk(client, f"/v1/contacts/{theirs}/timeline", rep_headers, limit=2)
    assert timeline == activities[::-1]  # newest first


async def test_users_and_roles(citus_api: CitusApi) -> None:
    client = citus_api.client
    tenant = await citus_api.onboard()
    boss, _ = await member(citus_api, tenant, role="sales_manager")
    rep, rep_headers = await member(citus_api, tenant, manager_id=boss)
    users = await walk(client, "/v1/users", tenant.headers, limit=1)
    assert set(users) == {boss, rep}
    changed = await client.patch(
        f"/v1/users/{rep}", json={"name": "Renamed Rep"}, headers=tenant.headers
    )
    assert changed.status_code == 200, changed.text
    # A manager's scope covers the reports' records (the role closure on the shard).
    account = await created(client, "/v1/accounts", rep_headers, name="Rep's")
    _, boss_headers = await member(citus_api, tenant, role="sales_manager")
    assert (await client.get(f"/v1/accounts/{account}", headers=boss_headers)).status_code == 404

    roles = await client.get("/v1/roles", headers=tenant.headers)
    assert roles.status_code == 200, roles.text
    assert {"admin", "sales_rep", "sales_manager"} <= {r["name"] for r in roles.json()["data"]}
    made = await client.post(
        "/v1/roles",
        json={
            "name": "auditor",
            "description": "reads accounts",
            "permissions": [{"object": "accounts", "action": "read"}],
        },
        headers=tenant.headers,
    )
    assert made.status_code == 201, made.text
    assert (await client.get("/v1/roles/auditor", headers=tenant.headers)).status_code == 200
