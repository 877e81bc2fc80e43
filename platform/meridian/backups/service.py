"""Exporting a tenant to an archive and restoring it from one.

**Export** reads the tenant's shard rows in one repeatable-read snapshot (every table
of the shard's catalog with a tenant_id, in foreign-key order, but the shard's own
residency row), then its control-plane rows and data keys, and writes the archive
(``meridian.backups.archive``). The snapshot must be the tenant's current home: its
residency row at the directory's epoch, so a move that switched meanwhile is noticed;
and every key version its rows use must be among the keys archived, so a key
rotation that retired a version meanwhile is noticed. Either makes the export stop.

**Import** restores the archive as the same tenant, onto any shard at the archive's
schema revision, plain PostgreSQL or Citus, whichever the source was:

1. the archive is checked whole (operator key, MAC, checksums) before anything else;
2. the tenant must not exist, or exist as deleted (crypto-shredded: its leftover rows
   are unreadable, and are removed);
3. on the target shard, in one transaction: the residency row at a new epoch, the rows
   by COPY in foreign-key order, then counts and row hashes compared with the
   manifest; committed only if all match;
4. in one control-plane transaction: the tenant, its clients, roles, rules,
   revocations and policy version, its data keys wrapped under this platform's KEK,
   and the directory entry — so the tenant is reachable only once it is complete;
5. if that fails, the shard rows written in 3 are deleted again.

A session advisory lock on the control plane keeps two imports of one tenant apart
(the clean-up of one must never delete the other's rows).

**Citus shards** run the same statements on the coordinator: every one names the
tenant, so Citus routes it to the worker holding the tenant's shard group, and a
transaction of them stays on that worker (one snapshot for an export, one commit for
an import). COPY into a distributed table goes through the coordinator. The tenant
is entered with ``SET LOCAL app.tenant_id`` (``tenant_rows.enter_tenant_rows``), so
an admin role bound by forced row-level security (a Citus shard's owner) sees and
writes its rows; only deleting differs (``tenant_rows.delete_tenant_rows``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from meridian.backups.archive import (
    Manifest,
    OpenedArchive,
    OperatorKey,
    Spool,
    TableEntry,
    read_archive,
    seal_keys,
    write_archive,
)
from meridian.backups.errors import ExportRefused, ImportRefused
from meridian.crud.endpoints import Caches, invalidate_kind
from meridian.directory import CachedDirectory
from meridian.ids import new_id
from sharding import verify
from sharding.catalog import quote_ident, tenant_tables
from sharding.engine import asyncpg_dsn
from sharding.engines import ShardInfo
from sharding.models import Shard, TenantResidency
from sharding.placement import PlacementError, choose_shard, dedicated_taken, lock_placement
from sharding.tenant_rows import (
    SESSION,
    RowAccessError,
    copied_columns,
    copy_in,
    copy_out,
    delete_tenant_rows,
    enter_tenant_rows,
    require_copy_in,
    schema_revision,
)
from tenancy.context import TenantStatus
from tenancy.keyring import TenantKeyring
from tenancy.models import DirectoryEntry, Tenant

# The tenant's control-plane rows an archive carries, in the order they are restored
# (the tenant first: the others refer to it), with the condition naming them ($1: the
# tenant's id) and the columns left out. Not carried: the directory entry (a restore
# writes its own), the data keys (``keys.json``), refresh tokens (sessions: users sign
# in again) and the tenant's past moves.
CONTROL_TABLES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("tenant", "id = $1::uuid", ()),
    ("oauth_client", "tenant_id = $1::uuid", ()),
    ("token_revocation", "tenant_id = $1::uuid", ()),
    ("tenant_role", "tenant_id = $1::uuid", ()),
    ("policy_version", "tenant_id = $1::uuid", ()),
    # The tenant's own rules (its domain is its id); their ids are drawn anew.
    (
        "casbin_rule",
        "(ptype = 'p' AND v1 = $1::uuid::text) OR (ptype = 'g' AND v2 = $1::uuid::text)",
        ("id",),
    ),
)
# Columns holding the data-key version a row's ciphertexts were sealed with.
_KEY_VERSION_COLUMNS = ("enc_version", "key_version")
_EXPORTABLE = (TenantStatus.ACTIVE.value, TenantStatus.SUSPENDED.value)
# Each shard's own record of the tenant (its epoch there): never archived, written anew.
RESIDENCY_TABLE = TenantResidency.__tablename__


@dataclasses.dataclass(frozen=True, slots=True)
class BackupDeps:
    """What exports and imports use (built from the runtime by
    ``meridian.backups.wiring.backup_deps``)."""

    # The control plane as its owner: a restore writes tenants, keys and rules, and
    # removes a deleted tenant's rows, which the app role may not all do.
    control_owner_dsn: str
    keyring: TenantKeyring
    directory: CachedDirectory
    caches: Caches
    reload_topology: Callable[[], Awaitable[list[ShardInfo]]]
    tenant_counts: Callable[[], Awaitable[dict[str, int]]]
    # Tells every instance the tenant's policy reached a version (drops older rules).
    announce_policy: Callable[[UUID, int], Awaitable[None]]


# -- connections ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def control_owner(deps: BackupDeps) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(deps.control_owner_dsn, pool_size=2, max_overflow=0)
    try:
        yield engine
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def shard_admin(admin_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(admin_dsn), timeout=10.0, server_settings=SESSION)
    try:
        yield conn
    finally:
        await conn.close()


async def driver_of(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under ``conn``, in its transaction: COPY runs on it."""
    raw = await conn.get_raw_connection()
    driver: asyncpg.Connection = raw.driver_connection
    return driver


async def session_settings(conn: AsyncConnection) -> None:
    # The control rows render and parse as the shard rows do (see tenant_rows.SESSION).
    for name, value in SESSION.items():
        await conn.execute(select(func.set_config(name, value, True)))


async def make_workdir() -> Path:
    return Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="meridian-archive-"))


async def remove_dir(path: Path) -> None:
    await asyncio.to_thread(shutil.rmtree, path, True)


# -- export --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Home:
    tenant: dict[str, Any]
    shard_id: str
    epoch: int
    admin_dsn: str
    engine: str


async def _find_tenant(conn: AsyncConnection, tenant: str) -> _Home:
    try:
        by = Tenant.id == UUID(tenant)
    except ValueError:
        by = Tenant.slug == tenant
    row = (
        await conn.execute(
            select(
                Tenant.id,
                Tenant.slug,
                Tenant.name,
                Tenant.region,
                Tenant.plan,
                Tenant.status,
                DirectoryEntry.shard_id,
                DirectoryEntry.epoch,
                Shard.admin_dsn,
                Shard.engine,
            )
            .join(DirectoryEntry, DirectoryEntry.tenant_id == Tenant.id)
            .join(Shard, Shard.id == DirectoryEntry.shard_id)
            .where(by)
        )
    ).one_or_none()
    if row is None:
        raise LookupError(f"no tenant {tenant!r}")
    if row.status not in _EXPORTABLE:
        reason = (
            "its data keys were destroyed (crypto-shredded): nothing of it can be read"
            if row.status == TenantStatus.DELETED.value
            else "it has not finished onboarding"
        )
        raise ExportRefused(f"tenant {row.slug} is {row.status}: {reason}")
    info = {
        "id": str(row.id),
        "slug": row.slug,
        "name": row.name,
        "region": row.region,
        "plan": row.plan,
        "status": row.status,
    }
    return _Home(info, row.shard_id, row.epoch, row.admin_dsn, row.engine)


async def _key_versions_used(
    conn: asyncpg.Connection, tables: Sequence[str], tenant_id: UUID
) -> set[int]:
    columns = await conn.fetch(
        "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = ANY($1::text[]) "
        "AND column_name = ANY($2::text[])",
        list(tables),
        list(_KEY_VERSION_COLUMNS),
    )
    used: set[int] = set()
    for col in columns:
        t, c = quote_ident(col["t"]), quote_ident(col["c"])
        rows = await conn.fetch(
            f"SELECT DISTINCT {c} AS v FROM {t} WHERE tenant_id = $1 AND {c} IS NOT NULL",  # noqa: S608
            tenant_id,
        )
        used.update(int(r["v"]) for r in rows)
    return used


async def _spool(
    conn: asyncpg.Connection,
    plane: str,
    table: str,
    columns: Sequence[str],
    where: str,
    tenant_id: UUID,
    workdir: Path,
) -> tuple[TableEntry, Path]:
    path = workdir / f"{plane}.{table}.copy"
    async with Spool(path) as spool:
        rows = await copy_out(conn, table, columns, where, [tenant_id], spool.write)
    entry = TableEntry(plane, table, tuple(columns), rows, spool.sha256.hexdigest())
    return entry, path


async def export_tenant(
    deps: BackupDeps, tenant: str, out: Path, key: OperatorKey
) -> dict[str, Any]:
    """What `meridian tenants export` does: the tenant (id or slug) into the archive
    ``out`` (which must not exist), its data keys sealed under ``key``."""
    started = time.monotonic()
    await asyncio.to_thread(_check_out, out)
    archive_id = new_id()
    workdir = await make_workdir()
    try:
        async with control_owner(deps) as control:
            async with control.connect() as conn:
                home = await _find_tenant(conn, tenant)
            tenant_id = UUID(home.tenant["id"])
            entries: list[TableEntry] = []
            files: dict[str, Path] = {}
            async with (
                shard_admin(home.admin_dsn) as shard,
                shard.transaction(isolation="repeatable_read", readonly=True),
            ):
                await enter_tenant_rows(shard, tenant_id)
                # The snapshot starts here: it must be of the tenant's home at the epoch
                # the directory named (a move switched meanwhile: not any more). On
                # Citus every statement below that reads rows names the tenant, so all
                # go to the one worker holding its shard group, over the one connection
                # Citus keeps for that group in a transaction; measured on Citus 13.2,
                # that worker transaction keeps the coordinator's repeatable-read
                # snapshot across statements (tests/backups/test_citus.py checks it).
                residency = await shard.fetchrow(
                    f"SELECT epoch FROM {RESIDENCY_TABLE} WHERE tenant_id = $1",  # noqa: S608
                    tenant_id,
                )
                if residency is None or residency["epoch"] != home.epoch:
                    raise ExportRefused(
                        f"tenant {home.tenant['slug']} moved off shard {home.shard_id} "
                        "during the export: run it again"
                    )
                tables = [t for t in await tenant_tables(shard) if t != RESIDENCY_TABLE]
                columns = await copied_columns(shard, tables)
                sums = await verify.checksums(shard, tables, tenant_id)
                for table in tables:
                    entry, path = await _spool(
                        shard, "shard", table, columns[table], "tenant_id = $1", tenant_id, workdir
                    )
                    count, row_hash = sums[table]
                    if count != entry.rows:  # one snapshot: cannot differ
                        raise ExportRefused(f"{table}: {entry.rows} rows copied of {count}")
                    entries.append(dataclasses.replace(entry, row_hash=row_hash))
                    files[entry.member] = path
                used = await _key_versions_used(shard, tables, tenant_id)
                shard_revision = await schema_revision(shard)
            async with control.connect() as conn:
                # One snapshot of the control rows and keys.
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
                await conn.begin()
                await session_settings(conn)
                keys = await deps.keyring.unwrapped_keys(conn, tenant_id)
                driver = await driver_of(conn)
                control_columns = await copied_columns(driver, [t for t, _, _ in CONTROL_TABLES])
                for table, where, left_out in CONTROL_TABLES:
                    cols = [c for c in control_columns[table] if c not in left_out]
                    entry, path = await _spool(
                        driver, "control", table, cols, where, tenant_id, workdir
                    )
                    entries.append(entry)
                    files[entry.member] = path
                control_revision = await schema_revision(driver)
                await conn.rollback()  # read only
        readable = {k.version for k in keys if k.key is not None}
        if not used <= readable:
            missing = ", ".join(str(v) for v in sorted(used - readable))
            raise ExportRefused(
                f"rows of tenant {home.tenant['slug']} use key version(s) {missing}, which "
                "are no longer live: a key rotation ran during the export; run it again"
            )
        keys_json = seal_keys(key, archive_id, tenant_id, keys)
        manifest = Manifest(
            archive_id=archive_id,
            created_at=datetime.now(UTC),
            tenant=home.tenant,
            source={
                "shard_id": home.shard_id,
                "engine": home.engine,
                "epoch": home.epoch,
                "shard_revision": shard_revision,
                "control_revision": control_revision,
            },
            tables=tuple(entries),
            keys_sha256=_sha256(keys_json),
            key_id=key.key_id,
        )
        size = await asyncio.to_thread(write_archive, out, manifest, key, keys_json, files)
    finally:
        await remove_dir(workdir)
    return {
        "tenant": home.tenant["id"],
        "slug": home.tenant["slug"],
        "archive": str(out),
        "archive_id": str(archive_id),
        "bytes": size,
        "shard": home.shard_id,
        "rows": sum(e.rows for e in entries if e.plane == "shard"),
        "tables": {e.name: e.rows for e in entries if e.plane == "shard" and e.rows},
        "key_versions": len(keys),
        "seconds": round(time.monotonic() - started, 3),
    }


def _check_out(out: Path) -> None:
    if out.exists():
        raise ExportRefused(f"{out} exists: an archive is never overwritten")
    if not out.parent.is_dir():
        raise ExportRefused(f"no folder {out.parent} to write {out.name} in")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- import --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    tenant_id: UUID
    shard: ShardInfo
    admin_dsn: str
    epoch: int
    # A deleted tenant of that id: its shard (whose rows of it are removed) and its
    # policy version (the restored one is newer, so no instance keeps older rules).
    leftover_shard: str | None
    leftover_admin_dsn: str | None
    leftover_engine: str | None
    leftover_policy: int


def _lock_key(tenant_id: UUID) -> int:
    # A signed 64-bit advisory lock key of the tenant's id, apart from other locks.
    return int.from_bytes(tenant_id.bytes[:8], "big", signed=True) ^ 0x494D504F5254


@contextlib.asynccontextmanager
async def _import_lock(control: AsyncEngine, tenant_id: UUID) -> AsyncIterator[None]:
    async with control.connect() as conn:
        got = await conn.scalar(select(func.pg_try_advisory_lock(_lock_key(tenant_id))))
        await conn.commit()
        if not got:
            raise ImportRefused(f"another import of tenant {tenant_id} is running")
        try:
            yield
        finally:
            await conn.execute(select(func.pg_advisory_unlock(_lock_key(tenant_id))))
            await conn.commit()


async def target_shard(deps: BackupDeps, region: str, shard_id: str | None) -> ShardInfo:
    """Where an archive is restored: ``shard_id``, else where placement puts a new
    tenant of ``region``; a shard that is not offline, of either engine (the rows of
    an archive do not depend on the engine they were read from)."""
    shards = await deps.reload_topology()
    if shard_id is not None:
        shard = next((s for s in shards if s.id == shard_id), None)
        if shard is None:
            raise ImportRefused(f"no shard {shard_id!r} in the topology")
        if shard.state == "offline":
            raise ImportRefused(f"shard {shard_id} is offline")
    else:
        try:
            shard = choose_shard(shards, await deps.tenant_counts(), region)
        except PlacementError as exc:
            raise ImportRefused(f"{exc}: name a shard with --shard") from exc
    return shard


async def _plan(
    deps: BackupDeps, control: AsyncEngine, manifest: Manifest, shard_id: str | None
) -> _Plan:
    tenant_id = manifest.tenant_id
    slug = str(manifest.tenant["slug"])
    async with control.connect() as conn:
        existing = (
            await conn.execute(
                select(Tenant.status, Tenant.slug, DirectoryEntry.shard_id, DirectoryEntry.epoch)
                .outerjoin(DirectoryEntry, DirectoryEntry.tenant_id == Tenant.id)
                .where(Tenant.id == tenant_id)
            )
        ).one_or_none()
        holder = await conn.scalar(
            select(Tenant.id).where(Tenant.slug == slug, Tenant.id != tenant_id)
        )
        policy = await conn.scalar(
            text("SELECT version FROM policy_version WHERE tenant_id = :t"), {"t": tenant_id}
        )
    if existing is not None and existing.status != TenantStatus.DELETED.value:
        raise ImportRefused(
            f"tenant {existing.slug} ({tenant_id}) exists and is {existing.status}: an archive "
            "restores a tenant that was lost or deleted, never over a live one"
        )
    if holder is not None:
        raise ImportRefused(f"slug {slug!r} belongs to another tenant ({holder})")
    shard = await target_shard(deps, str(manifest.tenant["region"]), shard_id)
    async with control.connect() as conn:
        shards = {
            r.id: r for r in (await conn.execute(select(Shard.id, Shard.admin_dsn, Shard.engine)))
        }
    leftover = existing.shard_id if existing is not None else None
    left = shards.get(leftover) if leftover is not None else None
    old_epoch = existing.epoch if existing is not None and existing.epoch is not None else 0
    return _Plan(
        tenant_id=tenant_id,
        shard=shard,
        admin_dsn=shards[shard.id].admin_dsn,
        # Past both the archive's and a deleted tenant's epoch: an instance that still
        # holds either entry is refused by the shard and reads the directory again.
        epoch=max(int(manifest.source["epoch"]), old_epoch) + 1,
        leftover_shard=leftover,
        leftover_admin_dsn=left.admin_dsn if left is not None else None,
        leftover_engine=left.engine if left is not None else None,
        leftover_policy=int(policy or 0),
    )


async def check_schema(conn: asyncpg.Connection, manifest: Manifest, where: str) -> None:
    """The database at the archive's revision, its tables with the archive's columns."""
    plane = "shard" if where.startswith("shard") else "control"
    wanted = str(manifest.source[f"{plane}_revision"])
    found = await schema_revision(conn)
    if found != wanted:
        raise ImportRefused(
            f"{where} is at schema revision {found}, the archive at {wanted}: restore it "
            "onto a platform at the archive's revision"
        )
    entries = manifest.of(plane)
    columns = await _columns_or_none(conn, [e.name for e in entries])
    for entry in entries:
        have = columns.get(entry.name)
        if have is None or not set(entry.columns) <= set(have):
            raise ImportRefused(f"{where}: table {entry.name} does not have the archive's columns")


async def check_writable(conn: asyncpg.Connection, shard: ShardInfo) -> None:
    """The shard's admin role may COPY the archive's rows in (``require_copy_in``)."""
    try:
        await require_copy_in(conn, shard.engine)
    except RowAccessError as exc:
        raise ImportRefused(f"shard {shard.id}: {exc}") from exc


async def _columns_or_none(conn: asyncpg.Connection, tables: list[str]) -> dict[str, list[str]]:
    try:
        return await copied_columns(conn, tables)
    except LookupError as exc:
        raise ImportRefused(str(exc)) from exc


async def _restore_shard(conn: asyncpg.Connection, opened: OpenedArchive, plan: _Plan) -> int:
    """The tenant's shard rows in one transaction, checked against the manifest before
    it commits; the rows written."""
    manifest, tenant_id = opened.manifest, plan.tenant_id
    entries = manifest.of("shard")
    async with conn.transaction():
        await enter_tenant_rows(conn, tenant_id)
        if plan.leftover_shard == plan.shard.id:
            # The deleted tenant's rows: ciphertext nobody can open any more.
            await delete_tenant_rows(conn, tenant_id, engine=plan.shard.engine)
        tables = [t for t in await tenant_tables(conn) if t != RESIDENCY_TABLE]
        if sorted(tables) != sorted(e.name for e in entries):
            raise ImportRefused(f"shard {plan.shard.id} does not have the archive's tables")
        present = [t for t, n in (await verify.counts(conn, tables, tenant_id)).items() if n]
        if present:
            raise ImportRefused(
                f"shard {plan.shard.id} holds rows of tenant {tenant_id} already "
                f"({', '.join(sorted(present))}) that are not a deleted tenant's"
            )
        await conn.execute(
            f"INSERT INTO {RESIDENCY_TABLE} (tenant_id, epoch, writable) VALUES ($1, $2, true)",  # noqa: S608
            tenant_id,
            plan.epoch,
        )
        by_name = {e.name: e for e in entries}
        written = 0
        for table in tables:  # the target's foreign-key order
            entry = by_name[table]
            rows = await copy_in(conn, table, entry.columns, opened.files[entry.member])
            if rows != entry.rows:
                raise ImportRefused(f"{table}: {rows} rows read of the archive's {entry.rows}")
            written += rows
        sums = await verify.checksums(conn, tables, tenant_id)
        differ = [t for t in tables if sums[t] != (by_name[t].rows, by_name[t].row_hash)]
        if differ:
            raise ImportRefused(
                f"the restored rows of {', '.join(differ)} differ from the archived ones"
            )
    return written


async def _restore_control(
    deps: BackupDeps, control: AsyncEngine, opened: OpenedArchive, plan: _Plan
) -> int:
    """The tenant's control-plane rows, keys and directory entry in one transaction;
    the policy version it has now."""
    manifest, tenant_id = opened.manifest, plan.tenant_id
    async with control.connect() as conn, conn.begin():
        await session_settings(conn)
        await lock_placement(conn)
        if await dedicated_taken(conn, plan.shard, tenant_id):
            raise ImportRefused(f"shard {plan.shard.id} is dedicated and holds a tenant")
        if plan.leftover_shard is not None:
            # The deleted tenant: its keys are destroyed already; its rules have no
            # foreign key, the rest goes with the tenant row.
            await conn.execute(
                text(
                    "DELETE FROM casbin_rule WHERE (ptype = 'p' AND v1 = :d) "
                    "OR (ptype = 'g' AND v2 = :d)"
                ),
                {"d": str(tenant_id)},
            )
            await conn.execute(
                text("DELETE FROM tenant WHERE id = :t AND status = :s"),
                {"t": tenant_id, "s": TenantStatus.DELETED.value},
            )
        driver = await driver_of(conn)
        await check_schema(driver, manifest, "the control plane")
        for entry in manifest.of("control"):
            rows = await copy_in(driver, entry.name, entry.columns, opened.files[entry.member])
            if rows != entry.rows:
                raise ImportRefused(f"{entry.name}: {rows} rows read of {entry.rows}")
        # Where its data now resides.
        await conn.execute(
            text("UPDATE tenant SET region = :r, updated_at = now() WHERE id = :t"),
            {"r": plan.shard.region, "t": tenant_id},
        )
        version = await conn.scalar(
            text(
                "INSERT INTO policy_version (tenant_id, version) VALUES (:t, :old + 1) "
                "ON CONFLICT (tenant_id) DO UPDATE SET updated_at = now(), "
                "version = GREATEST(policy_version.version, :old) + 1 RETURNING version"
            ),
            {"old": plan.leftover_policy, "t": tenant_id},
        )
        await deps.keyring.restore_keys(conn, tenant_id, opened.keys)
        # Last: the tenant is reachable from here on, with everything in place.
        await conn.execute(
            text("INSERT INTO tenant_directory (tenant_id, shard_id, epoch) VALUES (:t, :s, :e)"),
            {"t": tenant_id, "s": plan.shard.id, "e": plan.epoch},
        )
    return int(version or 0)


async def import_tenant(
    deps: BackupDeps, archive: Path, key: OperatorKey, *, shard: str | None = None
) -> dict[str, Any]:
    """What `meridian tenants import` does: restore the archive as the same tenant, onto
    ``shard`` (default: where placement puts a new tenant of its region)."""
    started = time.monotonic()
    workdir = await make_workdir()
    try:
        opened = await asyncio.to_thread(read_archive, archive, key, workdir)
        manifest, tenant_id = opened.manifest, opened.manifest.tenant_id
        async with control_owner(deps) as control, _import_lock(control, tenant_id):
            plan = await _plan(deps, control, manifest, shard)
            async with control.connect() as conn:
                await check_schema(await driver_of(conn), manifest, "the control plane")
            async with shard_admin(plan.admin_dsn) as conn:
                await check_schema(conn, manifest, f"shard {plan.shard.id}")
                await check_writable(conn, plan.shard)
                rows = await _restore_shard(conn, opened, plan)
            try:
                policy = await _restore_control(deps, control, opened, plan)
            except BaseException:
                # Nothing of the tenant may stay on the shard without its control rows.
                async with shard_admin(plan.admin_dsn) as conn:
                    await delete_tenant_rows(conn, tenant_id, engine=plan.shard.engine)
                raise
        await _announce(deps, tenant_id, policy)
        purged: dict[str, int] = {}
        if plan.leftover_admin_dsn is not None and plan.leftover_shard != plan.shard.id:
            # The deleted tenant's unreadable rows on the shard it lived on.
            async with shard_admin(plan.leftover_admin_dsn) as conn, conn.transaction():
                purged = await delete_tenant_rows(conn, tenant_id, engine=plan.leftover_engine)
    finally:
        await remove_dir(workdir)
    return {
        "tenant": str(tenant_id),
        "slug": manifest.tenant["slug"],
        "shard": plan.shard.id,
        "region": plan.shard.region,
        "epoch": plan.epoch,
        "rows": rows,
        "key_versions": len(opened.keys),
        "archive_id": str(manifest.archive_id),
        "archived_at": manifest.created_at.isoformat(),
        "replaced_deleted_tenant": plan.leftover_shard is not None,
        "leftover_rows_removed": sum(purged.values()),
        "seconds": round(time.monotonic() - started, 3),
    }


async def _announce(deps: BackupDeps, tenant_id: UUID, policy: int) -> None:
    """Every instance forgets what it held of the tenant (a deleted one of that id, or
    a version newer than the archive's)."""
    deps.keyring.forget(tenant_id)
    await deps.directory.invalidate(tenant_id)
    await deps.announce_policy(tenant_id, policy)
    caches = deps.caches
    for kind in sorted(set(caches.record_cache) | set(caches.list_cache)):
        await invalidate_kind(caches, tenant_id, kind)
