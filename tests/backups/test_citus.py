"""Tenant archives of Citus shards, on the platform of ``tests/fixtures/engines.py``
whose control plane holds the Citus cluster as ``citus-1`` beside the plain shards
``us-1`` and ``eu-1``: a tenant on the Citus shard exported (one snapshot while it is
written to), deleted and imported again there; moved through an archive to a plain
shard and back; a forged archive and a failure half-way leaving the Citus shard as it
was; a sandbox copy made on the Citus shard. The app role fails any tenant statement
that runs on more than one shard there, so every API check below is also a check that
the restored tenant's statements are routed to one worker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meridian.backups import service
from meridian.backups.archive import OperatorKey
from meridian.backups.errors import ArchiveInvalid, ImportRefused
from meridian.backups.sandbox import import_as_new
from meridian.backups.service import BackupDeps, export_tenant, import_tenant
from meridian.backups.wiring import backup_deps
from tests.backups.helpers import (
    UUID_RE,
    api_view,
    delete,
    fetch,
    forge,
    id_map,
    new_token,
    populate,
    post,
    same,
    shard_rows,
    tamper,
    translate,
)
from tests.citus.shard_admin import shard_admin_dsn
from tests.encryption.conftest import runtime_of
from tests.fixtures.api import Tenant, token_for
from tests.fixtures.citus import CitusCluster
from tests.fixtures.citus_api import CITUS_SHARD
from tests.fixtures.engines import Platform


async def _record_admin_dsn(platform: Platform, dsn: str) -> None:
    await fetch(platform.control_url, "UPDATE shard SET admin_dsn = $1 WHERE id = $2", dsn,
                CITUS_SHARD)  # fmt: skip


@pytest.fixture
async def platform(
    citus_platform: Platform, engines_citus_cluster: CitusCluster
) -> AsyncIterator[Platform]:
    """The Citus shard's recorded admin DSN names a role with BYPASSRLS for the test
    (a restore copies rows in, which forced row-level security refuses its owner), and
    the owner's again after it."""
    cluster = engines_citus_cluster
    await _record_admin_dsn(citus_platform, await shard_admin_dsn(cluster))
    try:
        yield citus_platform
    finally:
        await _record_admin_dsn(citus_platform, cluster.dsn(cluster.owner))


@pytest.fixture
def deps(platform: Platform) -> BackupDeps:
    return backup_deps(runtime_of(platform.client))


async def _admin(platform: Platform) -> dict[str, str]:
    return await platform.admin.headers()


async def _home(platform: Platform, tenant_id: str) -> list[tuple[Any, ...]]:
    rows = await fetch(
        platform.control_url,
        "SELECT t.status, d.shard_id, d.epoch FROM tenant t "
        "JOIN tenant_directory d ON d.tenant_id = t.id WHERE t.id = $1",
        uuid.UUID(tenant_id),
    )
    return [tuple(r) for r in rows]


async def _writes_go_on(client: httpx.AsyncClient, tenant: Tenant) -> None:
    """A new contact is sealed with the restored key and found by its blind index."""
    new = await post(client, tenant, "/v1/contacts", last_name="New", email="new@example.test")
    found = await client.get(
        "/v1/contacts", params={"email": "NEW@example.test"}, headers=tenant.headers
    )
    assert [r["id"] for r in found.json()["data"]] == [new["id"]]


async def test_a_citus_tenant_is_exported_from_one_snapshot_and_restored_there(
    platform: Platform,
    deps: BackupDeps,
    key: OperatorKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, citus = platform.client, platform.shard_urls[CITUS_SHARD]
    tenant = await platform.onboard()
    made = await populate(client, tenant)
    before = await api_view(client, tenant, made)
    rows_before = await shard_rows(citus, tenant.id)

    # A contact written (and committed on the tenant's worker) after the export took
    # its row hashes and before it copies the rows: the copy must not see it, or the
    # archive's counts and hashes would not be those of its rows (the export stops).
    real_checksums = service.verify.checksums
    late: list[str] = []

    async def then_a_write(*args: Any) -> Any:
        sums = await real_checksums(*args)
        late.append((await post(client, tenant, "/v1/contacts", last_name="Late"))["id"])
        return sums

    monkeypatch.setattr(service.verify, "checksums", then_a_write)
    archive = tmp_path / "t.tar.gz"
    exported = await export_tenant(deps, tenant.slug, archive, key)
    monkeypatch.undo()
    assert late, "no write during the export"
    assert exported["shard"] == CITUS_SHARD
    assert exported["rows"] == sum(len(r) for r in rows_before.values())

    await delete(client, await _admin(platform), tenant)
    done = await import_tenant(deps, archive, key, shard=CITUS_SHARD)
    assert done["replaced_deleted_tenant"] is True
    # The deleted tenant's rows there (the late contact's too) removed in the restore's
    # transaction, routed to the tenant's worker.
    assert done["leftover_rows_removed"] == 0  # same shard: counted as removed in place

    tenant = await new_token(client, tenant)
    same(await api_view(client, tenant, made), before)
    assert await shard_rows(citus, tenant.id) == rows_before
    assert await _home(platform, tenant.id) == [("active", CITUS_SHARD, 2)]
    await _writes_go_on(client, tenant)


async def test_an_archive_moves_a_tenant_from_citus_to_plain_and_back(
    platform: Platform, deps: BackupDeps, key: OperatorKey, tmp_path: Path
) -> None:
    client = platform.client
    citus, plain = platform.shard_urls[CITUS_SHARD], platform.shard_urls["eu-1"]
    tenant = await platform.onboard()
    made = await populate(client, tenant)
    before = await api_view(client, tenant, made)
    rows_before = await shard_rows(citus, tenant.id)

    # Citus → plain: the same rows, byte for byte as text, and row hashes that agree.
    await export_tenant(deps, tenant.id, tmp_path / "from-citus.tar.gz", key)
    await delete(client, await _admin(platform), tenant)
    done = await import_tenant(deps, tmp_path / "from-citus.tar.gz", key, shard="eu-1")
    assert done["leftover_rows_removed"] == sum(len(r) for r in rows_before.values()) + 1
    tenant = await new_token(client, tenant)
    same(await api_view(client, tenant, made), before)
    assert await shard_rows(plain, tenant.id) == rows_before
    # The deleted tenant's rows (and residency) on the Citus shard are gone.
    assert not any((await shard_rows(citus, tenant.id)).values())
    assert not await fetch(
        citus, "SELECT 1 FROM tenant_residency WHERE tenant_id = $1", uuid.UUID(tenant.id)
    )

    # Plain → Citus.
    again = await api_view(client, tenant, made)
    await export_tenant(deps, tenant.id, tmp_path / "from-plain.tar.gz", key)
    await delete(client, await _admin(platform), tenant)
    await import_tenant(deps, tmp_path / "from-plain.tar.gz", key, shard=CITUS_SHARD)
    tenant = await new_token(client, tenant)
    same(await api_view(client, tenant, made), again)
    assert await shard_rows(citus, tenant.id) == rows_before
    assert not any((await shard_rows(plain, tenant.id)).values())
    assert await _home(platform, tenant.id) == [("active", CITUS_SHARD, 3)]
    await _writes_go_on(client, tenant)


async def test_a_forged_archive_or_a_failure_leaves_the_citus_shard_as_it_was(
    platform: Platform,
    engines_citus_cluster: CitusCluster,
    deps: BackupDeps,
    key: OperatorKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, citus = platform.client, platform.shard_urls[CITUS_SHARD]
    tenant = await platform.onboard()
    made = await populate(client, tenant)
    archive = tmp_path / "t.tar.gz"
    await export_tenant(deps, tenant.id, archive, key)
    before = await api_view(client, tenant, made)
    await delete(client, await _admin(platform), tenant)
    shredded = await shard_rows(citus, tenant.id)
    assert shredded["contact"]

    # As the shard's owner (bound by forced row-level security): refused up front.
    await _record_admin_dsn(platform, engines_citus_cluster.dsn(engines_citus_cluster.owner))
    try:
        with pytest.raises(ImportRefused, match="forced row-level security on the coordinator"):
            await import_tenant(deps, archive, key, shard=CITUS_SHARD)
    finally:
        await _record_admin_dsn(platform, await shard_admin_dsn(engines_citus_cluster))
    assert await shard_rows(citus, tenant.id) == shredded

    tampered = tamper(archive, "shard/contact.copy", lambda d: d.replace(b"Lovelace", b"Lovelacf"))
    with pytest.raises(ArchiveInvalid, match=r"checksum mismatch: shard/contact\.copy"):
        await import_tenant(deps, tampered, key, shard=CITUS_SHARD)
    # Consistent in itself, but not the rows the source hashed: refused by the Citus
    # shard's own row hashes, after the leftovers were deleted and the rows copied in
    # the same transaction, which is rolled back whole on the worker.
    forged = forge(archive, key, "shard/contact.copy", lambda d: d.replace(b"gold", b"gilt"))
    with pytest.raises(ImportRefused, match="restored rows of contact differ"):
        await import_tenant(deps, forged, key, shard=CITUS_SHARD)
    assert await shard_rows(citus, tenant.id) == shredded
    assert await _home(platform, tenant.id) == [("deleted", CITUS_SHARD, 1)]

    async def fails(*args: object) -> None:
        raise RuntimeError("the KMS is down")

    monkeypatch.setattr(deps.keyring, "restore_keys", fails)
    with pytest.raises(RuntimeError, match="KMS"):
        await import_tenant(deps, archive, key, shard=CITUS_SHARD)
    # The shard's transaction had committed; the clean-up deleted its rows again (and
    # the deleted tenant's, which that transaction had replaced).
    assert not any((await shard_rows(citus, tenant.id)).values())
    assert not await fetch(
        citus, "SELECT 1 FROM tenant_residency WHERE tenant_id = $1", uuid.UUID(tenant.id)
    )
    assert await _home(platform, tenant.id) == [("deleted", CITUS_SHARD, 1)]
    monkeypatch.undo()
    await import_tenant(deps, archive, key, shard=CITUS_SHARD)
    tenant = await new_token(client, tenant)
    same(await api_view(client, tenant, made), before)


async def test_a_sandbox_copy_of_a_citus_tenant_is_made_on_the_citus_shard(
    platform: Platform, deps: BackupDeps, key: OperatorKey, tmp_path: Path
) -> None:
    client, citus = platform.client, platform.shard_urls[CITUS_SHARD]
    tenant = await platform.onboard()
    made = await populate(client, tenant)
    before = await api_view(client, tenant, made)
    original_rows = await shard_rows(citus, tenant.id)
    archive = tmp_path / "t.tar.gz"
    await export_tenant(deps, tenant.id, archive, key)

    slug = f"sb-{uuid.uuid4().hex[:10]}"
    done = await import_as_new(deps, archive, key, slug=slug, shard=CITUS_SHARD)
    assert done["shard"] == CITUS_SHARD
    assert done["values_resealed"] > 0
    creds = done["client"]
    sandbox = Tenant(
        id=str(done["tenant"]),
        slug=slug,
        shard_id=CITUS_SHARD,
        client_id=str(creds["client_id"]),
        client_secret=str(creds["client_secret"]),
        token=await token_for(client, str(creds["client_id"]), str(creds["client_secret"])),
    )
    ids = await id_map((citus, tenant.id), (citus, sandbox.id))
    copy = await api_view(client, sandbox, {name: ids[old] for name, old in made.items()})
    assert copy["policy_version"] == {1}
    expected = translate({k: v for k, v in before.items() if k != "policy_version"}, ids)
    assert {k: v for k, v in copy.items() if k != "policy_version"} == {
        translate(k, ids): v for k, v in expected.items()
    }
    # No id of the original in the sandbox's rows; the original untouched.
    old_ids = {i for rows in original_rows.values() for r in rows for i in UUID_RE.findall(r)}
    sandbox_rows = await shard_rows(citus, sandbox.id)
    for table, rows in sandbox_rows.items():
        assert not old_ids & {i for r in rows for i in UUID_RE.findall(r)}, table
    assert await shard_rows(citus, tenant.id) == original_rows
    await _writes_go_on(client, sandbox)
