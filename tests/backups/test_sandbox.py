"""A tenant archive restored as a new tenant (``--as-new``) beside the live original:
the sandbox answers as the original did, through its own client, with other ids in
the same order, its own keys and blind indexes; no id of the original is left in its
rows; the original is untouched, and survives the sandbox's crypto-shredding. A slug
that exists is refused with nothing written."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from meridian.backups.archive import OperatorKey
from meridian.backups.errors import ImportRefused
from meridian.backups.sandbox import DISABLED_REASON, NOT_CARRIED
from meridian.backups.service import BackupDeps, export_tenant
from meridian.operations import import_tenant_archive
from tests.backups.helpers import (
    SSN,
    UUID_RE,
    api_view,
    delete,
    fetch,
    id_map,
    populate,
    post,
    shard_rows,
    translate,
)
from tests.encryption.conftest import runtime_of
from tests.fixtures.api import Tenant, token_for
from tests.fixtures.databases import TestDatabases, raw_dsn


async def test_import_as_new_makes_a_sandbox_beside_the_live_original(
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tenant: Tenant,
    deps: BackupDeps,
    databases: TestDatabases,
    key: OperatorKey,
    tmp_path: Path,
) -> None:
    made = await populate(app_client, tenant)
    # A subscription (sealed secret) and an event log: copied, the first disabled.
    hook = await post(
        app_client,
        tenant,
        "/v1/webhooks",
        url="https://receiver.example/hook",
        event_types=["contact.created"],
    )
    before = await api_view(app_client, tenant, made)
    original_rows = await shard_rows(raw_dsn(databases.shards["us-1"][1]), tenant.id)
    archive = tmp_path / "t.tar.gz"
    await export_tenant(deps, tenant.slug, archive, key)

    rt = runtime_of(app_client)
    done = await import_tenant_archive(
        rt, archive, key, shard="eu-1", as_new="acme-sandbox", name="Acme sandbox"
    )
    assert done["slug"] == "acme-sandbox"
    assert done["shard"] == "eu-1"
    assert done["copy_of"] == {"tenant": tenant.id, "slug": tenant.slug}
    assert set(done["not_carried"]) <= set(NOT_CARRIED)
    assert done["values_resealed"] > 0
    new_id = str(done["tenant"])
    assert new_id != tenant.id
    client = done["client"]
    sandbox = Tenant(
        id=new_id,
        slug="acme-sandbox",
        shard_id="eu-1",
        client_id=str(client["client_id"]),
        client_secret=str(client["client_secret"]),
        token=await token_for(app_client, str(client["client_id"]), str(client["client_secret"])),
    )

    # Through the API, with the sandbox's own token: the same content, other ids, the
    # same order; lookups, owners, managers and shares point at the new ids; the
    # blind-index searches (email, phone, a sensitive custom field) find the records.
    ids = await id_map(
        (raw_dsn(databases.shards[tenant.shard_id][1]), tenant.id),
        (raw_dsn(databases.shards[sandbox.shard_id][1]), sandbox.id),
    )
    assert all(new != old for old, new in ids.items())
    new_made = {name: ids[old] for name, old in made.items()}
    copy = await api_view(app_client, sandbox, new_made)
    assert copy["policy_version"] == {1}
    expected = translate({k: v for k, v in before.items() if k != "policy_version"}, ids)
    assert {k: v for k, v in copy.items() if k != "policy_version"} == {
        translate(k, ids): v for k, v in expected.items()
    }
    # One record read whole: its sealed fields and sensitive custom value opened under
    # the sandbox's key, its references the new ids.
    resp = await app_client.get(f"/v1/contacts/{made['ada']}", headers=tenant.headers)
    original_ada = resp.json()
    resp = await app_client.get(f"/v1/contacts/{ids[made['ada']]}", headers=sandbox.headers)
    assert resp.status_code == 200, resp.text
    assert resp.json() == translate(original_ada, ids)
    assert resp.json()["custom"]["ssn"] == SSN
    assert resp.json()["phone"] == original_ada["phone"] is not None

    # The webhook: there, its secret resealed, but disabled.
    resp = await app_client.get("/v1/webhooks", headers=sandbox.headers)
    assert resp.status_code == 200, resp.text
    (copied_hook,) = resp.json()["data"]
    assert copied_hook["id"] == ids.get(hook["id"], copied_hook["id"]) != hook["id"]
    assert copied_hook["enabled"] is False
    assert copied_hook["disabled_reason"] == DISABLED_REASON

    # No id of the original is left anywhere in the sandbox's rows.
    sandbox_rows = await shard_rows(raw_dsn(databases.shards["eu-1"][1]), new_id)
    old_ids = {i for rows in original_rows.values() for r in rows for i in UUID_RE.findall(r)}
    assert tenant.id in old_ids
    assert made["ada"] in old_ids
    leaked = {
        table: [r for r in rows if old_ids & set(UUID_RE.findall(r))]
        for table, rows in sandbox_rows.items()
    }
    assert not any(leaked.values()), leaked
    assert sandbox_rows["contact"]
    # The event log comes along (numbered or still waiting to be), ids mapped.
    events = sandbox_rows["event_outbox"] + sandbox_rows["event_pending"]
    assert len(events) == len(original_rows["event_outbox"] + original_rows["event_pending"]) > 0
    for table in NOT_CARRIED:
        assert not sandbox_rows[table], table

    # Its own keys: one version, not the original's key material.
    keys = await fetch(
        raw_dsn(databases.control),
        "SELECT tenant_id::text, version, state FROM tenant_key WHERE tenant_id = ANY($1) "
        "ORDER BY 1",
        [uuid.UUID(new_id)],
    )
    assert [tuple(k) for k in keys] == [(new_id, 1, "active")]
    control = await fetch(
        raw_dsn(databases.control),
        "SELECT t.status, t.region, t.plan, d.shard_id, d.epoch, "
        "(SELECT count(*) FROM oauth_client c WHERE c.tenant_id = t.id) AS clients, "
        "(SELECT count(*) FROM casbin_rule r WHERE r.v1 = t.id::text OR r.v2 = t.id::text) "
        "AS rules FROM tenant t JOIN tenant_directory d ON d.tenant_id = t.id WHERE t.id = $1",
        uuid.UUID(new_id),
    )
    plan = await fetch(
        raw_dsn(databases.control), "SELECT plan FROM tenant WHERE id = $1", uuid.UUID(tenant.id)
    )
    assert tuple(control[0])[:6] == ("active", "eu", plan[0][0], "eu-1", 1, 1)
    original_rules = await fetch(
        raw_dsn(databases.control),
        "SELECT count(*) FROM casbin_rule WHERE v1 = $1 OR v2 = $1",
        tenant.id,
    )
    assert control[0]["rules"] == original_rules[0][0] > 0

    # The original: untouched, its rows and its searches.
    assert await shard_rows(raw_dsn(databases.shards["us-1"][1]), tenant.id) == original_rows
    again = await api_view(app_client, tenant, made)
    assert again == before

    # A write in the sandbox is sealed with its key and found by its index, not the
    # original's.
    new = await post(app_client, sandbox, "/v1/contacts", last_name="N", email="n@example.test")
    found = await app_client.get(
        "/v1/contacts", params={"email": "N@example.test"}, headers=sandbox.headers
    )
    assert [r["id"] for r in found.json()["data"]] == [new["id"]]
    found = await app_client.get(
        "/v1/contacts", params={"email": "N@example.test"}, headers=tenant.headers
    )
    assert found.json()["data"] == []

    # Crypto-shredding the sandbox leaves the original working.
    await delete(app_client, admin_headers, sandbox)
    assert await api_view(app_client, tenant, made) == before


async def test_a_taken_slug_is_refused_with_nothing_written(
    app_client: httpx.AsyncClient,
    tenant: Tenant,
    deps: BackupDeps,
    databases: TestDatabases,
    key: OperatorKey,
    tmp_path: Path,
) -> None:
    await populate(app_client, tenant)
    archive = tmp_path / "t.tar.gz"
    await export_tenant(deps, tenant.slug, archive, key)
    rt = runtime_of(app_client)
    control = raw_dsn(databases.control)
    tenants = await fetch(control, "SELECT id, slug FROM tenant ORDER BY id")
    counts = {
        shard: await fetch(
            raw_dsn(url),
            "SELECT (SELECT count(*) FROM contact), (SELECT count(*) FROM tenant_residency)",
        )
        for shard, (_, url) in databases.shards.items()
    }
    with pytest.raises(ImportRefused, match=f"slug {tenant.slug!r} belongs to tenant"):
        await import_tenant_archive(rt, archive, key, shard="eu-1", as_new=tenant.slug)
    with pytest.raises(ImportRefused, match="is not a slug"):
        await import_tenant_archive(rt, archive, key, shard="eu-1", as_new="Not A Slug")
    assert await fetch(control, "SELECT id, slug FROM tenant ORDER BY id") == tenants
    for shard, (_, url) in databases.shards.items():
        assert (
            await fetch(
                raw_dsn(url),
                "SELECT (SELECT count(*) FROM contact), (SELECT count(*) FROM tenant_residency)",
            )
            == counts[shard]
        )


async def test_a_failure_in_the_control_plane_leaves_no_sandbox_rows(
    app_client: httpx.AsyncClient,
    tenant: Tenant,
    deps: BackupDeps,
    databases: TestDatabases,
    key: OperatorKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await populate(app_client, tenant)
    archive = tmp_path / "t.tar.gz"
    await export_tenant(deps, tenant.slug, archive, key)
    rt = runtime_of(app_client)
    shard = raw_dsn(databases.shards["eu-1"][1])
    residents = await fetch(shard, "SELECT tenant_id FROM tenant_residency ORDER BY 1")

    async def fails(*args: object) -> None:
        raise RuntimeError("the KMS is down")

    monkeypatch.setattr(rt.keyring, "restore_keys", fails)
    with pytest.raises(RuntimeError, match="KMS"):
        await import_tenant_archive(rt, archive, key, shard="eu-1", as_new="half-way")
    assert await fetch(shard, "SELECT tenant_id FROM tenant_residency ORDER BY 1") == residents
    assert not await fetch(
        shard, "SELECT 1 FROM contact WHERE tenant_id <> ALL($1::uuid[])",
        [r["tenant_id"] for r in residents],
    )  # fmt: skip
    assert not await fetch(
        raw_dsn(databases.control), "SELECT 1 FROM tenant WHERE slug = 'half-way'"
    )


async def test_a_merge_undone_in_the_sandbox_brings_back_its_sealed_values(
    app_client: httpx.AsyncClient,
    tenant: Tenant,
    deps: BackupDeps,
    key: OperatorKey,
    tmp_path: Path,
) -> None:
    """A merge's snapshot holds the merged record as stored (sealed values, blind
    indexes, its sensitive custom value): sealed again for the record's new id, so an
    undo in the sandbox restores a readable, searchable record under that id."""
    made = await populate(app_client, tenant)
    twin = await post(
        app_client,
        tenant,
        "/v1/contacts",
        last_name="Twin",
        email="twin@example.test",
        phone="+1 555 0100",
        custom={"ssn": "ZZ-999"},
    )
    resp = await app_client.post(
        "/v1/contacts/merge",
        json={"survivor_id": made["ada"], "merged_ids": [twin["id"]]},
        headers=tenant.headers,
    )
    assert resp.status_code in (200, 201), resp.text
    archive = tmp_path / "t.tar.gz"
    await export_tenant(deps, tenant.slug, archive, key)
    done = await import_tenant_archive(
        runtime_of(app_client), archive, key, shard="eu-1", as_new="merged-sandbox"
    )
    client = done["client"]
    headers = {
        "Authorization": "Bearer "
        + await token_for(app_client, str(client["client_id"]), str(client["client_secret"]))
    }
    (merge,) = (await app_client.get("/v1/merges", headers=headers)).json()["data"]
    (new_twin,) = merge["merged_ids"]
    assert new_twin != twin["id"]
    original = (await app_client.get("/v1/merges", headers=tenant.headers)).json()["data"]
    undone = await app_client.post(f"/v1/merges/{merge['id']}/undo", headers=headers)
    assert undone.status_code == 200, undone.text
    back = await app_client.get(f"/v1/contacts/{new_twin}", headers=headers)
    assert back.status_code == 200, back.text
    assert back.json()["email"] == "twin@example.test"
    assert back.json()["custom"]["ssn"] == "ZZ-999"
    for params in ({"email": "TWIN@example.test"}, {"filter": "custom.ssn[eq]:zz-999"}):
        found = await app_client.get("/v1/contacts", params=params, headers=headers)
        assert [r["id"] for r in found.json()["data"]] == [new_twin], params
    # The original's merge is as it was: not undone, its twin still merged away.
    assert (await app_client.get("/v1/merges", headers=tenant.headers)).json()["data"] == original
    assert original[0]["merged_ids"] == [twin["id"]]
    gone = await app_client.get(f"/v1/contacts/{twin['id']}", headers=tenant.headers)
    assert gone.status_code == 404, gone.text
