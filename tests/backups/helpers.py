"""What the tenant archive tests share: a tenant with something of everything made
through the API, what the API answers about it, and deleting it."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import tarfile
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from meridian.backups.archive import Manifest, OperatorKey
from meridian.backups.sandbox import NOT_CARRIED
from meridian.models import shard_metadata
from tests.fields.helpers import define
from tests.fixtures.api import Tenant, token_for
from tests.fixtures.users import new_user_id

SSN = "AB-123-456"
# Every shard table but the residency row, which each shard writes for itself.
TABLES = sorted(t for t in shard_metadata.tables if t != "tenant_residency")
LISTS = ("/v1/contacts", "/v1/accounts", "/v1/leads", "/v1/cases", "/v1/opportunities",
         "/v1/activities", "/v1/users", "/v1/roles")  # fmt: skip


async def post(client: httpx.AsyncClient, tenant: Tenant, path: str, **body: Any) -> Any:
    resp = await client.post(path, json=body, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def populate(client: httpx.AsyncClient, tenant: Tenant) -> dict[str, str]:
    """Records of several kinds, users with a reporting line, shares, sealed built-in
    fields and a sensitive custom field; the ids a test looks up again."""
    # A role of the tenant's own (rules in the control plane), held by a user.
    await post(
        client,
        tenant,
        "/v1/roles",
        name="auditor",
        permissions=[{"object": "contacts", "action": "read"}],
    )
    manager = await new_user_id(client, tenant, role="sales_manager")
    rep = await new_user_id(client, tenant, manager_id=manager)
    await new_user_id(client, tenant, role="auditor", manager_id=manager)
    await define(client, tenant, "contacts", name="ssn", type="text", sensitive=True)
    await define(client, tenant, "contacts", name="tier", type="text")
    parent = await post(client, tenant, "/v1/accounts", name="Parent", tax_id="98-7654321")
    child = await post(
        client, tenant, "/v1/accounts", name="Child", parent_id=parent["id"], owner_id=rep
    )
    ada = await post(
        client,
        tenant,
        "/v1/contacts",
        first_name="Ada",
        last_name="Lovelace",
        email="Ada.Lovelace@Example.com",
        phone="+44 20 7946 0000",
        account_id=child["id"],
        owner_id=rep,
        custom={"ssn": SSN, "tier": "gold"},
    )
    for i in range(5):
        await post(
            client, tenant, "/v1/contacts", last_name=f"Contact {i}", email=f"c{i}@example.test"
        )
    await post(
        client,
        tenant,
        "/v1/opportunities",
        account_id=parent["id"],
        name="Big deal",
        amount="1250.5",
        currency="eur",
        owner_id=manager,
    )
    await post(client, tenant, "/v1/leads", last_name="Hopper", email="grace@cobol.example")
    await post(client, tenant, "/v1/cases", subject="Late", priority="high", contact_id=ada["id"])
    await post(
        client,
        tenant,
        "/v1/activities",
        type="call",
        subject="Met",
        occurred_at="2026-03-01T09:00:00+00:00",
        contact_id=ada["id"],
    )
    for path in (f"/v1/contacts/{ada['id']}", f"/v1/accounts/{parent['id']}"):
        await post(client, tenant, f"{path}/shares", user_id=manager)
    await post(client, tenant, f"/v1/contacts/{ada['id']}/shares", team_id=manager)
    return {"ada": ada["id"], "parent": parent["id"], "manager": manager, "rep": rep}


async def api_view(
    client: httpx.AsyncClient, tenant: Tenant, made: dict[str, str]
) -> dict[str, Any]:
    """What the API answers about the tenant: every list, shares, searches."""
    view: dict[str, Any] = {}
    for path in LISTS:
        resp = await client.get(path, params={"limit": "200"}, headers=tenant.headers)
        assert resp.status_code == 200, resp.text
        view[path] = resp.json()["data"]
    assert view["/v1/contacts"], "nothing to compare"
    # The policy version (the roles' ETag) is set past any an instance may hold by a
    # restore: compared apart (same).
    view["policy_version"] = {r.pop("policy_version") for r in view["/v1/roles"]}
    for path in (f"/v1/contacts/{made['ada']}", f"/v1/accounts/{made['parent']}"):
        resp = await client.get(f"{path}/shares", headers=tenant.headers)
        assert resp.status_code == 200, resp.text
        view[f"{path}/shares"] = resp.json()["data"]
    for params in (
        {"email": "ada.lovelace@example.com"},  # blind index of a built-in field
        {"phone": "+442079460000"},
        {"filter": f"custom.ssn[eq]:{SSN.lower()}"},  # of a sensitive custom field
    ):
        resp = await client.get("/v1/contacts", params=params, headers=tenant.headers)
        assert resp.status_code == 200, resp.text
        view[str(params)] = [r["id"] for r in resp.json()["data"]]
        assert view[str(params)] == [made["ada"]], params
    resp = await client.get(
        "/v1/leads", params={"email": "GRACE@cobol.example"}, headers=tenant.headers
    )
    view["lead search"] = [r["id"] for r in resp.json()["data"]]
    assert len(view["lead search"]) == 1
    return view


def same(after: dict[str, Any], before: dict[str, Any]) -> None:
    """The restored tenant as the API answered before, but a newer policy version."""
    (old,), (new,) = before["policy_version"], after["policy_version"]
    assert new > old
    rest = {k: v for k, v in after.items() if k != "policy_version"}
    assert rest == {k: v for k, v in before.items() if k != "policy_version"}


async def delete(client: httpx.AsyncClient, admin: dict[str, str], tenant: Tenant) -> None:
    resp = await client.delete(f"/admin/v1/tenants/{tenant.id}", headers=admin)
    assert resp.status_code == 200, resp.text
    gone = await client.get("/v1/contacts", headers=tenant.headers)
    assert gone.status_code == 401, gone.text


async def new_token(client: httpx.AsyncClient, tenant: Tenant) -> Tenant:
    """The tenant's restored client signs in again (its secret's hash came back)."""
    tenant.token = await token_for(client, tenant.client_id, tenant.client_secret)
    return tenant


async def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """``sql``'s rows on the database at ``url`` (a shard's or the control plane's)."""
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def shard_rows(url: str, tenant_id: str) -> dict[str, list[str]]:
    """Every row of the tenant on the shard at ``url`` as text, per table (bytea in hex)."""
    conn = await asyncpg.connect(url)
    try:
        return {
            table: sorted(
                r[0]
                for r in await conn.fetch(
                    f'SELECT t::text FROM "{table}" AS t WHERE tenant_id = $1',
                    uuid.UUID(tenant_id),
                )
            )
            for table in TABLES
        }
    finally:
        await conn.close()


def tamper(archive: Path, member: str, change: Any) -> Path:
    """A copy of ``archive`` with ``member``'s bytes passed through ``change``."""
    out = archive.with_name(f"tampered-{member.replace('/', '-')}.tar.gz")
    with tarfile.open(archive) as src, tarfile.open(out, "w:gz") as dst:
        for m in src:
            f = src.extractfile(m)
            assert f is not None
            data = f.read()
            if m.name == member:
                data = change(data)
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    return out


def forge(archive: Path, key: OperatorKey, member: str, change: Any) -> Path:
    """A copy of ``archive`` with ``member`` changed and the manifest made to agree (its
    checksum and MAC), as a holder of the operator key could."""
    changed = tamper(archive, member, change)
    with tarfile.open(changed) as tar:
        f = tar.extractfile(member)
        assert f is not None
        digest = hashlib.sha256(f.read()).hexdigest()
        m = tar.extractfile("manifest.json")
        assert m is not None
        manifest = Manifest.decode(m.read(), key)
    tables = tuple(
        dataclasses.replace(t, sha256=digest) if t.member == member else t for t in manifest.tables
    )
    resealed = dataclasses.replace(manifest, tables=tables).encode(key)
    return tamper(changed, "manifest.json", lambda _: resealed)


UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def translate(value: Any, ids: dict[str, str]) -> Any:
    """``value`` with every id of ``ids`` replaced, inside strings too."""
    if isinstance(value, dict):
        return {translate(k, ids): translate(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [translate(v, ids) for v in value]
    if isinstance(value, str):
        return UUID_RE.sub(lambda m: ids.get(m.group(), m.group()), value)
    return value


async def id_map(old: tuple[str, str], new: tuple[str, str]) -> dict[str, str]:
    """Old id → new id of every row with an id, for a tenant (shard URL, tenant id) and
    its sandbox copy, paired in id order on both sides: if the new ids did not keep the
    old ones' order, the pairs (and what the API answers translated through them) would
    not match."""
    ids = {old[1]: new[1]}
    for table in (t for t, m in shard_metadata.tables.items() if "id" in m.c):
        if table in NOT_CARRIED:
            continue
        before, after = [
            await fetch(
                url,
                f'SELECT id::text FROM "{table}" WHERE tenant_id = $1 ORDER BY id',
                uuid.UUID(tenant_id),
            )
            for url, tenant_id in (old, new)
        ]
        assert len(before) == len(after), table
        ids.update((a[0], b[0]) for a, b in zip(before, after, strict=True))
    return ids
