"""Sensitive custom fields on both shard engines (PostgreSQL and Citus): sealed at rest
(record and index rows), in clear only with pii:read, found by equality through the
blind index, unique through it, never in an event, archived and restored without loss,
sealed again for a merge's survivor and by key rotation, and a sealed value from
elsewhere refused."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson

from meridian.encryption.reencrypt import pending, reencrypt, rotate_tenant_key
from tests.encryption.conftest import runtime_of
from tests.fields.helpers import contact, define, ids
from tests.fixtures.api import Tenant
from tests.fixtures.engines import *  # noqa: F403 - both shard engines
from tests.fixtures.engines import Platform
from tests.fixtures.problems import assert_problem
from tests.roles.helpers import permissions, role_headers

SSN = "AB-123-456"
BIRTH = "1815-12-10"
MAIL = "ada.private@example.org"


async def _sensitive_fields(client: httpx.AsyncClient, tenant: Tenant) -> None:
    await define(client, tenant, "contacts", name="ssn", type="text", sensitive=True, unique=True)
    await define(client, tenant, "contacts", name="born", type="date", sensitive=True)
    await define(client, tenant, "contacts", name="private_email", type="email", sensitive=True)
    await define(client, tenant, "contacts", name="region", type="text")


async def _stored(platform: Platform, tenant: Tenant, record_id: str) -> dict[str, Any]:
    """The contact's ``custom`` and its custom_value rows as the shard holds them."""
    async with platform.superuser(tenant.shard_id) as conn:
        custom = await conn.fetchval(
            "SELECT custom::text FROM contact WHERE tenant_id = $1 AND id = $2",
            uuid.UUID(tenant.id),
            uuid.UUID(record_id),
        )
        values = await conn.fetch(
            "SELECT d.name, v.text_value, v.date_value, v.sealed_value, v.bidx, "
            "v.key_version, v.unique_value FROM custom_value v JOIN field_definition d "
            "ON d.tenant_id = v.tenant_id AND d.id = v.field_id "
            "WHERE v.tenant_id = $1 AND v.record_id = $2",
            uuid.UUID(tenant.id),
            uuid.UUID(record_id),
        )
    return {"custom": orjson.loads(custom), "values": {r["name"]: dict(r) for r in values}}


async def _events_text(platform: Platform, tenant: Tenant) -> str:
    async with platform.superuser(tenant.shard_id) as conn:
        rows = await conn.fetch(
            "SELECT data::text FROM event_outbox WHERE tenant_id = $1 "
            "UNION ALL SELECT data::text FROM event_pending WHERE tenant_id = $1",
            uuid.UUID(tenant.id),
        )
    return "\n".join(r[0] for r in rows)


async def test_sealed_at_rest_in_clear_only_with_pii_read(
    app_client: httpx.AsyncClient, tenant: Tenant, platform: Platform
) -> None:
    await _sensitive_fields(app_client, tenant)
    made = await contact(
        app_client, tenant, ssn=SSN, born=BIRTH, private_email=MAIL.upper(), region="EMEA"
    )
    assert made.status_code == 201, made.text
    record = made.json()
    assert record["custom"] == {
        "ssn": SSN,
        "born": BIRTH,
        "private_email": MAIL,
        "region": "EMEA",
    }
    stored = await _stored(platform, tenant, record["id"])
    raw = orjson.dumps(stored, default=bytes.hex).decode()
    for plain in (SSN, BIRTH, MAIL, SSN.casefold()):
        assert plain not in raw, plain
    assert set(stored["custom"]["ssn"]) == {"sealed"}
    assert stored["custom"]["region"] == "EMEA"
    ssn = stored["values"]["ssn"]
    assert ssn["text_value"] is None
    assert ssn["sealed_value"] == stored["custom"]["ssn"]["sealed"]
    assert ssn["key_version"] == 1
    assert len(ssn["bidx"]) > 0
    assert ssn["unique_value"] == ssn["bidx"].hex()
    assert stored["values"]["born"]["date_value"] is None

    # With pii:read in clear (twice: the second from the cache, still sealed there).
    path = f"/v1/contacts/{record['id']}"
    for _ in range(2):
        got = (await app_client.get(path, headers=tenant.headers)).json()
        assert got["custom"]["ssn"] == SSN
    # Without it masked whole, in a record, a list and a search result alike.
    reader = await role_headers(app_client, tenant, "read_only", scope="crm:read")
    masked = (await app_client.get(path, headers=reader)).json()["custom"]
    assert masked == {"ssn": "***", "born": "***", "private_email": "***", "region": "EMEA"}
    page = (await app_client.get("/v1/contacts", headers=reader)).json()["data"]
    assert [c["custom"]["ssn"] for c in page] == ["***"]
    clear_page = (await app_client.get("/v1/contacts", headers=tenant.headers)).json()["data"]
    assert [c["custom"]["born"] for c in clear_page] == [BIRTH]


async def test_found_by_equality_only_and_unique_through_the_blind_index(
    app_client: httpx.AsyncClient, tenant: Tenant, platform: Platform
) -> None:
    await _sensitive_fields(app_client, tenant)
    first = (await contact(app_client, tenant, ssn=SSN, born=BIRTH)).json()
    other = (await contact(app_client, tenant, ssn="ZZ-999", private_email=MAIL)).json()
    # Case-insensitive, as a text field's uniqueness compares.
    assert await ids(app_client, tenant, "contacts", f"custom.ssn[eq]:{SSN.lower()}") == {
        first["id"]
    }
    assert await ids(app_client, tenant, "contacts", f"custom.born[eq]:{BIRTH}") == {first["id"]}
    assert await ids(
        app_client, tenant, "contacts", f"custom.private_email[eq]:{MAIL.upper()}"
    ) == {other["id"]}
    both = f"and(custom.ssn[eq]:{SSN},custom.born[eq]:{BIRTH})"
    assert await ids(app_client, tenant, "contacts", both) == {first["id"]}
    assert await ids(app_client, tenant, "contacts", "custom.ssn[eq]:nobody") == set()
    # Anything but a top-level equality is refused, and so is sorting by it.
    for refused in (
        "custom.ssn[starts]:AB",
        "custom.ssn[ne]:x",
        f"or(custom.ssn[eq]:{SSN},last_name[eq]:x)",
        "not(custom.born[eq]:2000-01-01)",
    ):
        resp = await app_client.get(
            "/v1/contacts", params={"filter": refused}, headers=tenant.headers
        )
        assert_problem(resp, 422, "validation")
    resp = await app_client.get(
        "/v1/contacts", params={"sort": "custom.ssn"}, headers=tenant.headers
    )
    problem = assert_problem(resp, 400, "bad-request")
    assert "sensitive" in problem["detail"]
    # Filtering on a masked field would tell whether a value is on file.
    reader = await role_headers(app_client, tenant, "read_only", scope="crm:read")
    resp = await app_client.get(
        "/v1/contacts", params={"filter": f"custom.ssn[eq]:{SSN}"}, headers=reader
    )
    assert_problem(resp, 403, "forbidden")
    # Unique ignoring case, on creation and on update; the same value again is no change.
    dup = await contact(app_client, tenant, ssn=SSN.lower())
    assert assert_problem(dup, 409, "duplicate")["duplicate_of"] == first["id"]
    path = f"/v1/contacts/{other['id']}"
    clash = await app_client.patch(path, json={"custom": {"ssn": SSN}}, headers=tenant.headers)
    assert assert_problem(clash, 409, "duplicate")["duplicate_of"] == first["id"]
    before = (await _stored(platform, tenant, first["id"]))["custom"]["ssn"]
    same = await app_client.patch(
        f"/v1/contacts/{first['id']}", json={"custom": {"ssn": SSN}}, headers=tenant.headers
    )
    assert same.status_code == 200, same.text
    assert (await _stored(platform, tenant, first["id"]))["custom"]["ssn"] == before
    history = await app_client.get(f"/v1/contacts/{first['id']}/history", headers=tenant.headers)
    assert [e["action"] for e in history.json()["data"]] == ["created"]


async def test_never_in_an_event_only_that_it_changed(
    app_client: httpx.AsyncClient, tenant: Tenant, platform: Platform
) -> None:
    await _sensitive_fields(app_client, tenant)
    made = (await contact(app_client, tenant, ssn=SSN, region="EMEA")).json()
    path = f"/v1/contacts/{made['id']}"
    changed = await app_client.patch(
        path, json={"custom": {"ssn": "CD-777", "region": "APAC"}}, headers=tenant.headers
    )
    assert changed.status_code == 200, changed.text
    sealed = (await _stored(platform, tenant, made["id"]))["custom"]["ssn"]["sealed"]
    text = await _events_text(platform, tenant)
    for secret in (SSN, "CD-777", sealed, sealed[:24]):
        assert secret not in text, secret
    history = await app_client.get(f"{path}/history", headers=tenant.headers)
    assert history.status_code == 200, history.text
    entries = history.json()["data"]
    updated = next(e for e in entries if e["action"] == "updated")
    assert {c["field"]: c for c in updated["changes"]} == {
        "custom.region": {"field": "custom.region", "from": "EMEA", "to": "APAC"},
        "custom.ssn": {"field": "custom.ssn", "changed": True},
    }
    created = next(e for e in entries if e["action"] == "created")
    custom = next(c for c in created["changes"] if c["field"] == "custom")
    assert custom["to"] == {"region": "EMEA"}


async def test_definition_rules_schema_and_archiving_without_loss(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    for body in (
        {"name": "vip", "type": "boolean", "sensitive": True},
        {"name": "score", "type": "number", "sensitive": True},
        {"name": "tag", "type": "text", "sensitive": True, "default": "x"},
    ):
        resp = await app_client.post(
            "/v1/objects/contacts/fields", json={"label": "L", **body}, headers=h
        )
        problem = assert_problem(resp, 422, "validation")
        assert problem["errors"][0]["type"] == "field_definition", problem
    made = await define(app_client, tenant, "contacts", name="ssn", type="text", sensitive=True)
    assert made["sensitive"] is True
    # It never changes, and never takes a default.
    field_path = f"/v1/objects/contacts/fields/{made['id']}"
    resp = await app_client.patch(field_path, json={"default": "x"}, headers=h)
    assert_problem(resp, 422, "validation")
    schema = (await app_client.get("/v1/objects/contacts/schema", headers=h)).json()
    assert schema["properties"]["custom"]["properties"]["ssn"]["x-sensitive"] is True

    record = (await contact(app_client, tenant, ssn=SSN)).json()
    assert (await app_client.delete(field_path, headers=h)).status_code == 204
    gone = (await app_client.get(f"/v1/contacts/{record['id']}", headers=h)).json()
    assert "ssn" not in gone["custom"]
    restored = await app_client.post(f"{field_path}/restore", headers=h)
    assert restored.status_code == 200, restored.text
    back = (await app_client.get(f"/v1/contacts/{record['id']}", headers=h)).json()
    assert back["custom"] == {"ssn": SSN}
    assert await ids(app_client, tenant, "contacts", f"custom.ssn[eq]:{SSN}") == {record["id"]}


async def test_a_sealed_value_from_elsewhere_is_refused(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant, platform: Platform
) -> None:
    await _sensitive_fields(app_client, tenant)
    victim = (await contact(app_client, tenant, ssn=SSN)).json()
    sealed = (await _stored(platform, tenant, victim["id"]))["custom"]["ssn"]
    mine = (await contact(app_client, tenant, ssn="MINE-1")).json()
    # Another record's ciphertext does not open for this one (its id is bound to it).
    for value in (sealed, {"sealed": "bm90IGEgY2lwaGVydGV4dA=="}, {"sealed": 1}):
        resp = await app_client.patch(
            f"/v1/contacts/{mine['id']}", json={"custom": {"ssn": value}}, headers=tenant.headers
        )
        assert_problem(resp, 422, "validation")
    # Another tenant's field of that name is its own: the tenant's values stay hidden,
    # on another shard or on the same one.
    for intruder in (other_tenant, await platform.onboard()):
        await define(app_client, intruder, "contacts", name="ssn", type="text", sensitive=True)
        assert await ids(app_client, intruder, "contacts", f"custom.ssn[eq]:{SSN}") == set()
        resp = await app_client.get(f"/v1/contacts/{victim['id']}", headers=intruder.headers)
        assert_problem(resp, 404, "not-found")
        # Its own value of the victim's ciphertext does not open either.
        mine = (await contact(app_client, intruder, ssn="X-1")).json()
        resp = await app_client.patch(
            f"/v1/contacts/{mine['id']}", json={"custom": {"ssn": sealed}}, headers=intruder.headers
        )
        assert_problem(resp, 422, "validation")


async def test_a_merge_seals_the_value_again_for_the_survivor_and_its_undo_restores(
    app_client: httpx.AsyncClient, tenant: Tenant, platform: Platform
) -> None:
    h = tenant.headers
    await _sensitive_fields(app_client, tenant)
    survivor = (await contact(app_client, tenant, region="EMEA")).json()
    merged = (await contact(app_client, tenant, ssn=SSN, born=BIRTH)).json()
    body = {"survivor_id": survivor["id"], "merged_ids": [merged["id"]]}
    # A role that merges without pii:read sees the preview's sensitive values masked.
    role = await app_client.post(
        "/v1/roles",
        json={
            "name": "merger",
            "permissions": permissions(
                *(("contacts", a) for a in ("read", "create", "update", "delete")),
                ("merges", "read"),
                ("merges", "undo"),
                ("duplicate_rules", "read"),
            ),
        },
        headers=h,
    )
    assert role.status_code == 201, role.text
    merger = await role_headers(app_client, tenant, "merger")
    for headers, shown in ((merger, "***"), (h, SSN)):
        preview = await app_client.post(
            "/v1/contacts/merge", json={**body, "dry_run": True}, headers=headers
        )
        assert preview.status_code == 200, preview.text
        field = preview.json()["fields"]["custom.ssn"]
        assert field["value"] == shown
        assert [c["value"] for c in field["candidates"]] == [None, shown]
        assert preview.json()["survivor"]["custom"]["ssn"] == shown

    done = await app_client.post("/v1/contacts/merge", json=body, headers=h)
    assert done.status_code == 201, done.text
    got = (await app_client.get(f"/v1/contacts/{survivor['id']}", headers=h)).json()
    assert got["custom"] == {"region": "EMEA", "ssn": SSN, "born": BIRTH}
    assert await ids(app_client, tenant, "contacts", f"custom.ssn[eq]:{SSN}") == {survivor["id"]}
    # Sealed for the survivor: its own id is bound to the ciphertext.
    sealed = (await _stored(platform, tenant, survivor["id"]))["custom"]["ssn"]
    assert sealed["sealed"] not in orjson.dumps(merged).decode()

    undo = await app_client.post(f"/v1/merges/{done.json()['merge_id']}/undo", headers=h)
    assert undo.status_code == 200, undo.text
    back = (await app_client.get(f"/v1/contacts/{merged['id']}", headers=h)).json()
    assert back["custom"] == {"ssn": SSN, "born": BIRTH}
    was = (await app_client.get(f"/v1/contacts/{survivor['id']}", headers=h)).json()
    assert was["custom"] == {"region": "EMEA"}
    assert await ids(app_client, tenant, "contacts", f"custom.ssn[eq]:{SSN}") == {merged["id"]}


async def test_sensitive_custom_values_move_to_the_new_key(
    app_client: httpx.AsyncClient, tenant: Tenant, platform: Platform
) -> None:
    """Active fields' values (in the record and custom_value) and an archived field's
    (in custom_value only) are sealed again; reads, filters, uniqueness and restoring
    the archived field work after the old version is destroyed."""
    rt = runtime_of(app_client)
    ctx = await rt.directory.load(uuid.UUID(tenant.id))
    assert ctx is not None
    h = tenant.headers
    await define(
        app_client, tenant, "contacts", name="ssn", type="text", sensitive=True, unique=True
    )
    kept = await define(app_client, tenant, "contacts", name="born", type="date", sensitive=True)
    await define(app_client, tenant, "cases", name="code", type="text", sensitive=True)
    made = [
        (await contact(app_client, tenant, ssn=f"S-{i}", born=f"1990-01-0{i}")).json()
        for i in range(1, 8)
    ]
    case = await app_client.post(
        "/v1/cases", json={"subject": "S", "custom": {"code": "K-1"}}, headers=h
    )
    assert case.status_code == 201, case.text
    field_path = f"/v1/objects/contacts/fields/{kept['id']}"
    assert (await app_client.delete(field_path, headers=h)).status_code == 204
    await rotate_tenant_key(rt, ctx.tenant_id, propagation=0)
    assert (await pending(rt, ctx))["custom_value"] == {1: 15}

    result = await reencrypt(rt, ctx, batch_size=3)
    assert result.rows["custom_value"] == 15
    assert result.retired == [1]
    async with platform.superuser(tenant.shard_id) as conn:
        versions = await conn.fetch(
            "SELECT key_version, count(*) FROM custom_value WHERE tenant_id = $1 "
            "AND key_version IS NOT NULL GROUP BY 1",
            ctx.tenant_id,
        )
    assert [tuple(r) for r in versions] == [(2, 15)]
    for i, record in enumerate(made, start=1):
        got = (await app_client.get(f"/v1/contacts/{record['id']}", headers=h)).json()
        assert got["custom"] == {"ssn": f"S-{i}"}
        assert await ids(app_client, tenant, "contacts", f"custom.ssn[eq]:s-{i}") == {record["id"]}
    got = (await app_client.get(f"/v1/cases/{case.json()['id']}", headers=h)).json()
    assert got["custom"] == {"code": "K-1"}
    dup = await app_client.post(
        "/v1/contacts", json={"last_name": "D", "custom": {"ssn": "S-3"}}, headers=h
    )
    assert dup.status_code == 409, dup.text
    restored = await app_client.post(f"{field_path}/restore", headers=h)
    assert restored.status_code == 200, restored.text
    got = (await app_client.get(f"/v1/contacts/{made[1]['id']}", headers=h)).json()
    assert got["custom"] == {"ssn": "S-2", "born": "1990-01-02"}
