"""Tenant data-key rotation and the background re-encryption that follows it.

Rotation publishes a new key version (decrypt-only, so every instance's searches
include its blind indexes), waits until every instance has seen it, then activates it:
new writes use it from then on. Re-encryption then walks each table's rows still on an
older version, in id order, a batch per transaction: rows locked, decrypted with their
old key, encrypted with the active one, and ciphertexts, blind indexes and
``enc_version`` written in one UPDATE per batch. It is resumable simply because
finished rows no longer match. Versions no row uses any more are retired (destroyed).

Searches never miss a row: they look for the indexes of every live version, and a
version is destroyed only once no row carries it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from meridian.encryption import repository as sealed_rows
from meridian.encryption.fields import SENSITIVE
from meridian.encryption.reseal import (
    CUSTOM_VALUES,
    EXPORT_FILTER,
    FILES,
    reseal_custom_value,
    reseal_fields,
)
from meridian.runtime import Runtime
from tenancy.context import TenantContext
from tenancy.crypto import FieldCipher, key_version_of

# (table, rows done in this table, rows to do in this table when it started)
Progress = Callable[[str, int, int], None]


@dataclass
class ReencryptResult:
    active_version: int
    rows: dict[str, int] = field(default_factory=dict)
    retired: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.rows.values())


async def rotate_tenant_key(rt: Runtime, tenant_id: UUID, *, propagation: float) -> int:
    """A new data-key version, active once every instance's searches include it
    (``propagation``: at least the instances' ``key_versions_ttl``). Returns it."""
    async with rt.control.begin() as conn:
        version = await rt.keyring.publish_key(conn, tenant_id)
    if propagation > 0:
        await asyncio.sleep(propagation)
    async with rt.control.begin() as conn:
        await rt.keyring.activate(conn, tenant_id, version)
    return version


async def pending(rt: Runtime, tenant: TenantContext) -> dict[str, dict[int, int]]:
    """Rows per table and old key version still waiting for re-encryption."""
    active = (await rt.keyring.active_cipher(tenant.tenant_id)).version
    out: dict[str, dict[int, int]] = {}
    async with rt.router.reader(tenant) as conn:
        for table in SENSITIVE:
            out[table] = await sealed_rows.key_versions(conn, table, tenant.tenant_id, active)
        out[CUSTOM_VALUES] = await sealed_rows.key_versions(
            conn, CUSTOM_VALUES, tenant.tenant_id, active, column="key_version"
        )
    return out


async def reencrypt(
    rt: Runtime,
    tenant: TenantContext,
    *,
    batch_size: int = 500,
    progress: Progress | None = None,
    retire: bool = True,
) -> ReencryptResult:
    """Move every row of the tenant to the active key version, then retire unused
    versions. Safe to interrupt and run again."""
    started = time.monotonic()
    tenant_id = tenant.tenant_id
    cipher = await rt.keyring.active_cipher(tenant_id)
    result = ReencryptResult(cipher.version)
    old: dict[int, FieldCipher] = {}
    # Rows an instance still on the previous active version writes meanwhile are picked
    # up by another pass; a few passes always suffice once every instance has moved on.
    for _ in range(5):
        todo = await pending(rt, tenant)
        if not any(todo.values()):
            break
        for table, versions in todo.items():
            if versions:
                batches = (
                    _custom_batches(tenant_id, old, cipher)
                    if table == CUSTOM_VALUES
                    else _table_batches(table, tenant_id, old, cipher)
                )
                await _walk(rt, tenant, table, versions, old, batches, batch_size, progress, result)
    if retire:
        result.retired = await retire_unused(rt, tenant)
    result.seconds = time.monotonic() - started
    return result


@dataclass(frozen=True)
class _Batches:
    """How one table's rows on an old key are read a batch at a time (after the last
    key of the previous batch) and written back under the active key."""

    read: Callable[[AsyncSession, int, UUID | None, int], Awaitable[list[dict[str, Any]]]]
    write: Callable[[AsyncSession, list[dict[str, Any]]], Awaitable[None]]
    last: Callable[[list[dict[str, Any]]], UUID]


async def _walk(
    rt: Runtime,
    tenant: TenantContext,
    table: str,
    versions: Mapping[int, int],
    old: dict[int, FieldCipher],
    batches: _Batches,
    batch_size: int,
    progress: Progress | None,
    result: ReencryptResult,
) -> None:
    """Every row of ``table`` on the old ``versions``, a batch per transaction."""
    total, done = sum(versions.values()), 0
    for version in versions:
        if version not in old:
            old[version] = await rt.keyring.cipher(tenant.tenant_id, version)
        last: UUID | None = None
        while True:
            async with rt.router.transaction(tenant, write=True) as session:
                rows = await batches.read(session, version, last, batch_size)
                if not rows:
                    break
                await batches.write(session, rows)
            last = batches.last(rows)
            done += len(rows)
            result.rows[table] = result.rows.get(table, 0) + len(rows)
            if progress is not None:
                progress(table, done, total)


def _table_batches(
    table: str, tenant_id: UUID, old: dict[int, FieldCipher], new: FieldCipher
) -> _Batches:
    """A table with sealed columns (``SENSITIVE``): ciphertexts, blind indexes and
    ``enc_version`` written in one UPDATE per batch."""
    fields = SENSITIVE[table]
    storage = [f"{f}_{s}" for f in fields for s in ("enc", "bidx")]

    async def read(
        session: AsyncSession, version: int, after: UUID | None, limit: int
    ) -> list[dict[str, Any]]:
        return await sealed_rows.sealed_batch(
            session, table, tenant_id, fields, version=version, after=after, limit=limit
        )

    async def write(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        sealed = [reseal_fields(table, r, old, new) for r in rows]
        by_column = zip(storage, zip(*sealed, strict=True), strict=True)
        await sealed_rows.reseal(
            session,
            table,
            tenant_id,
            version=new.version,
            ids=[r["id"] for r in rows],
            columns={name: list(values) for name, values in by_column},
        )

    return _Batches(read, write, lambda rows: rows[-1]["id"])


def _custom_batches(tenant_id: UUID, old: dict[int, FieldCipher], new: FieldCipher) -> _Batches:
    """The sensitive custom values (crud.custom): a batch of records' values, each
    opened with its old key and sealed again, in custom_value and in its record."""

    async def read(
        session: AsyncSession, version: int, after: UUID | None, limit: int
    ) -> list[dict[str, Any]]:
        return await sealed_rows.sealed_custom_batch(
            session, tenant_id, version=version, after=after, limit=limit
        )

    async def write(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        values = [reseal_custom_value(r, old, new) for r in rows]
        await sealed_rows.reseal_custom(session, tenant_id, version=new.version, values=values)

    return _Batches(read, write, lambda rows: max(r["record_id"] for r in rows))


async def retire_unused(rt: Runtime, tenant: TenantContext) -> list[int]:
    """Destroy the decrypt-only versions older than the active one that no row uses."""
    tenant_id = tenant.tenant_id
    active = (await rt.keyring.active_cipher(tenant_id)).version
    todo = await pending(rt, tenant)
    in_use = {v for versions in todo.values() for v in versions}
    async with rt.router.reader(tenant) as conn:
        in_use |= await kept_by_files(conn, tenant_id, active)
    retired: list[int] = []
    rt.keyring.forget(tenant_id)  # decide on the committed versions, not a cached list
    async with rt.control.begin() as conn:
        for info in await rt.keyring.versions(tenant_id):
            if info.state == "decrypt_only" and info.version < active:
                if info.version in in_use:
                    continue
                await rt.keyring.retire(conn, tenant_id, info.version)
                retired.append(info.version)
    # After the commit: a read in between would have cached the versions as they were.
    rt.keyring.forget(tenant_id)
    return retired


async def kept_by_files(conn: asyncpg.Connection, tenant_id: UUID, below: int) -> set[int]:
    """The versions older than ``below`` that stored files and export filters were
    sealed with. A rotation does not seal them again (they are the transfers' own,
    and short-lived: an export expires, an import's upload goes with its import), so
    such a version is kept until the last of them is gone; destroyed, it would leave
    them unreadable."""
    files = await sealed_rows.key_versions(conn, FILES, tenant_id, below, column="key_version")
    table, column = EXPORT_FILTER
    blobs = await conn.fetch(
        f"SELECT {column}_enc FROM {table} WHERE tenant_id = $1 AND {column}_enc IS NOT NULL",  # noqa: S608
        tenant_id,
    )
    filters = {key_version_of(bytes(b[0])) for b in blobs}
    return set(files) | {v for v in filters if v < below}


async def resolve_tenant(rt: Runtime, tenant: str) -> TenantContext:
    """A tenant by id or slug (for the command line)."""
    from sqlalchemy import select

    from tenancy.models import Tenant

    try:
        tenant_id: UUID | None = UUID(tenant)
    except ValueError:
        async with rt.control.connect() as conn:
            tenant_id = await conn.scalar(select(Tenant.id).where(Tenant.slug == tenant))
    ctx = await rt.directory.load(tenant_id) if tenant_id is not None else None
    if ctx is None:
        raise LookupError(f"no tenant {tenant!r}")
    return ctx
