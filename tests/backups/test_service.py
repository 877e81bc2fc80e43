"""Tenant archives on the real platform: a tenant made through the API is exported,
deleted (crypto-shredded) and imported again, on its own shard or another, and every
record, user, share, sealed value and blind-index search is as it was; a tampered
archive, a wrong operator key, a live tenant and a failure half-way are refused or
undone with nothing left behind."""

from __future__ import annotations

import base64
import os
import tarfile
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from meridian.backups.archive import OperatorKey
from meridian.backups.errors import (
    ArchiveInvalid,
    ExportRefused,
    ImportRefused,
    WrongOperatorKey,
)
from meridian.backups.service import BackupDeps, export_tenant, import_tenant
from tests.backups.helpers import (
    SSN,
    TABLES,
    api_view,
    delete,
    fetch,
    forge,
    new_token,
    populate,
    post,
    same,
    shard_rows,
    tamper,
)
from tests.fixtures.api import Tenant, onboard
from tests.fixtures.databases import TestDatabases, raw_dsn


async def _control(databases: TestDatabases, sql: str, *args: Any) -> list[asyncpg.Record]:
    return await fetch(raw_dsn(databases.control), sql, *args)


def _shard_url(databases: TestDatabases, shard_id: str) -> str:
    return raw_dsn(databases.shards[shard_id][1])


@pytest.mark.parametrize("onto", ["same shard", "other shard"])
async def test_export_delete_import_gives_back_the_same_tenant(
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tenant: Tenant,
    deps: BackupDeps,
    databases: TestDatabases,
    key: OperatorKey,
    tmp_path: Path,
    onto: str,
) -> None:
    made = await populate(app_client, tenant)
    before = await api_view(app_client, tenant, made)
    rows_before = await shard_rows(_shard_url(databases, tenant.shard_id), tenant.id)
    rules_before = await _control(
        databases,
        "SELECT ptype, v0, v1, v2, v3 FROM casbin_rule WHERE v1 = $1 OR v2 = $1 "
        "ORDER BY 1, 2, 3, 4, 5",
        tenant.id,
    )
    archive = tmp_path / "tenant.tar.gz"
    assert rules_before, "no rules of the tenant's own to compare"
    exported = await export_tenant(deps, tenant.slug, archive, key)
    assert exported["rows"] == sum(len(r) for r in rows_before.values())
    assert archive.stat().st_mode & 0o077 == 0  # its owner's only
    # Sealed values stay sealed in the archive.
    with tarfile.open(archive) as tar:
        everything = b"".join(
            f.read() for m in tar if m.isfile() and (f := tar.extractfile(m)) is not None
        )
    for plain in (
        b"Ada.Lovelace@",
        b"ada.lovelace@",
        SSN.encode(),
        b"+44 20 7946 0000",
        b"442079460000",
        b"98-7654321",
        b"987654321",
    ):
        assert plain not in everything, plain

    await delete(app_client, admin_headers, tenant)
    target = tenant.shard_id if onto == "same shard" else "eu-1"
    assert target != tenant.shard_id or onto == "same shard"
    done = await import_tenant(deps, archive, key, shard=target)
    assert done["shard"] == target
    assert done["replaced_deleted_tenant"] is True

    tenant = await new_token(app_client, tenant)
    same(await api_view(app_client, tenant, made), before)
    assert await shard_rows(_shard_url(databases, target), tenant.id) == rows_before
    if target != "us-1":
        # The deleted tenant's unreadable rows are gone from the shard it left.
        left = await shard_rows(_shard_url(databases, "us-1"), tenant.id)
        assert not any(left.values())
    status = await _control(
        databases,
        "SELECT t.status, t.region, d.shard_id, d.epoch FROM tenant t "
        "JOIN tenant_directory d ON d.tenant_id = t.id WHERE t.id = $1",
        uuid.UUID(tenant.id),
    )
    assert [tuple(status[0])] == [("active", "us" if target == "us-1" else "eu", target, 2)]
    assert (
        await _control(
            databases,
            "SELECT ptype, v0, v1, v2, v3 FROM casbin_rule WHERE v1 = $1 OR v2 = $1 "
            "ORDER BY 1, 2, 3, 4, 5",
            tenant.id,
        )
        == rules_before
    )
    # Writes go on: a new contact is sealed with the restored key and found by it.
    new = await post(app_client, tenant, "/v1/contacts", last_name="New", email="new@example.test")
    found = await app_client.get(
        "/v1/contacts", params={"email": "NEW@example.test"}, headers=tenant.headers
    )
    assert [r["id"] for r in found.json()["data"]] == [new["id"]]


async def test_import_places_by_region_and_refuses_a_live_tenant(
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tenant: Tenant,
    deps: BackupDeps,
    key: OperatorKey,
    tmp_path: Path,
) -> None:
    made = await populate(app_client, tenant)
    archive = tmp_path / "t.tar.gz"
    await export_tenant(deps, tenant.id, archive, key)
    with pytest.raises(ExportRefused, match="never overwritten"):
        await export_tenant(deps, tenant.id, archive, key)
    with pytest.raises(ImportRefused, match="exists and is active"):
        await import_tenant(deps, archive, key)
    before = await api_view(app_client, tenant, made)
    await delete(app_client, admin_headers, tenant)
    with pytest.raises(ExportRefused, match="crypto-shredded"):
        await export_tenant(deps, tenant.id, tmp_path / "again.tar.gz", key)
    done = await import_tenant(deps, archive, key)  # no --shard: the region's shard
    assert done["shard"] == "us-1"
    tenant = await new_token(app_client, tenant)
    same(await api_view(app_client, tenant, made), before)


async def test_a_tampered_archive_or_a_wrong_key_is_refused_with_nothing_written(
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tenant: Tenant,
    deps: BackupDeps,
    databases: TestDatabases,
    key: OperatorKey,
    tmp_path: Path,
) -> None:
    made = await populate(app_client, tenant)
    archive = tmp_path / "t.tar.gz"
    await export_tenant(deps, tenant.id, archive, key)
    before = await api_view(app_client, tenant, made)
    await delete(app_client, admin_headers, tenant)
    shredded = await shard_rows(_shard_url(databases, "us-1"), tenant.id)
    elsewhere = await shard_rows(_shard_url(databases, "eu-1"), tenant.id)

    one_row = tamper(archive, "shard/contact.copy", lambda d: d.replace(b"Lovelace", b"Lovelacf"))
    with pytest.raises(ArchiveInvalid, match=r"checksum mismatch: shard/contact\.copy"):
        await import_tenant(deps, one_row, key, shard="eu-1")
    manifest = tamper(archive, "manifest.json", lambda d: d.replace(b'"rows": 6', b'"rows": 7'))
    with pytest.raises(ArchiveInvalid, match="MAC does not match"):
        await import_tenant(deps, manifest, key, shard="eu-1")
    with pytest.raises(WrongOperatorKey, match="sealed under operator key"):
        await import_tenant(deps, archive, OperatorKey(os.urandom(32)), shard="eu-1")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ArchiveInvalid):
        await import_tenant(deps, cut, key, shard="eu-1")

    # Nothing changed: the tenant is still the deleted one, its rows where they were.
    assert await shard_rows(_shard_url(databases, "us-1"), tenant.id) == shredded
    assert await shard_rows(_shard_url(databases, "eu-1"), tenant.id) == elsewhere
    assert [
        r["status"]
        for r in await _control(
            databases, "SELECT status FROM tenant WHERE id = $1", uuid.UUID(tenant.id)
        )
    ] == ["deleted"]
    # And the sound archive still restores.
    await import_tenant(deps, archive, key, shard="eu-1")
    tenant = await new_token(app_client, tenant)
    same(await api_view(app_client, tenant, made), before)


async def test_rows_that_differ_from_the_source_are_not_restored(
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tenant: Tenant,
    deps: BackupDeps,
    databases: TestDatabases,
    key: OperatorKey,
    tmp_path: Path,
) -> None:
    """An archive consistent in itself whose rows are not the ones the source hashed:
    the shard's own row hashes catch it, and the shard's transaction is rolled back."""
    await populate(app_client, tenant)
    archive = tmp_path / "t.tar.gz"
    await export_tenant(deps, tenant.id, archive, key)
    await delete(app_client, admin_headers, tenant)
    forged = forge(archive, key, "shard/contact.copy", lambda d: d.replace(b"gold", b"gilt"))
    with pytest.raises(ImportRefused, match="restored rows of contact differ"):
        await import_tenant(deps, forged, key, shard="eu-1")
    assert not any((await shard_rows(_shard_url(databases, "eu-1"), tenant.id)).values())
    assert (await shard_rows(_shard_url(databases, "us-1"), tenant.id))["contact"]


async def test_a_failure_in_the_control_plane_leaves_nothing_on_the_shard(
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tenant: Tenant,
    deps: BackupDeps,
    databases: TestDatabases,
    key: OperatorKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = await populate(app_client, tenant)
    archive = tmp_path / "t.tar.gz"
    await export_tenant(deps, tenant.id, archive, key)
    before = await api_view(app_client, tenant, made)
    await delete(app_client, admin_headers, tenant)

    async def fails(*args: object) -> None:
        raise RuntimeError("the KMS is down")

    monkeypatch.setattr(deps.keyring, "restore_keys", fails)
    with pytest.raises(RuntimeError, match="KMS"):
        await import_tenant(deps, archive, key, shard="eu-1")
    assert not any((await shard_rows(_shard_url(databases, "eu-1"), tenant.id)).values())
    still = await _control(
        databases,
        "SELECT t.status, d.shard_id FROM tenant t JOIN tenant_directory d "
        "ON d.tenant_id = t.id WHERE t.id = $1",
        uuid.UUID(tenant.id),
    )
    assert [tuple(r) for r in still] == [("deleted", "us-1")]
    monkeypatch.undo()
    await import_tenant(deps, archive, key, shard="eu-1")
    tenant = await new_token(app_client, tenant)
    same(await api_view(app_client, tenant, made), before)


async def test_an_archive_restores_where_the_tenant_never_existed_and_not_over_a_slug(
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tenant: Tenant,
    deps: BackupDeps,
    databases: TestDatabases,
    key: OperatorKey,
    tmp_path: Path,
) -> None:
    """A lost tenant: its control rows gone too (a control plane restored from before
    it existed). Its slug taken meanwhile by another tenant is refused."""
    made = await populate(app_client, tenant)
    archive = tmp_path / "t.tar.gz"
    await export_tenant(deps, tenant.id, archive, key)
    before = await api_view(app_client, tenant, made)
    await delete(app_client, admin_headers, tenant)
    tid = uuid.UUID(tenant.id)
    conn = await asyncpg.connect(_shard_url(databases, tenant.shard_id))
    try:
        await conn.execute("SET session_replication_role = replica")
        for table in [*TABLES, "tenant_residency"]:
            await conn.execute(f'DELETE FROM "{table}" WHERE tenant_id = $1', tid)
    finally:
        await conn.close()
    await _control(databases, "DELETE FROM tenant WHERE id = $1", tid)
    squatter = await onboard(app_client, admin_headers, slug=tenant.slug)
    with pytest.raises(ImportRefused, match="belongs to another tenant"):
        await import_tenant(deps, archive, key)
    await delete(app_client, admin_headers, squatter)
    await _control(databases, "UPDATE tenant SET slug = $2 WHERE id = $1",
                   uuid.UUID(squatter.id), f"gone-{uuid.uuid4().hex[:8]}")  # fmt: skip
    done = await import_tenant(deps, archive, key)
    assert done["replaced_deleted_tenant"] is False
    assert done["epoch"] == 2
    tenant = await new_token(app_client, tenant)
    same(await api_view(app_client, tenant, made), before)


def test_operator_keys_are_read_raw_or_base64(tmp_path: Path) -> None:
    from meridian.backups.archive import load_operator_key
    from meridian.backups.errors import BackupError

    raw = os.urandom(32)
    (tmp_path / "raw").write_bytes(raw)
    (tmp_path / "b64").write_text(base64.b64encode(raw).decode() + "\n")
    assert load_operator_key(tmp_path / "raw") == load_operator_key(tmp_path / "b64")
    (tmp_path / "short").write_text(base64.b64encode(raw[:16]).decode())
    with pytest.raises(BackupError, match="32 bytes"):
        load_operator_key(tmp_path / "short")
    with pytest.raises(BackupError, match="cannot read"):
        load_operator_key(tmp_path / "missing")
    assert "key=" not in repr(OperatorKey(raw))
