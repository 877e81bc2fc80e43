"""Restoring a tenant archive as a new tenant beside the original (a sandbox copy).

The archive's rows are staged on the target shard in temporary tables, in the shard
transaction that writes them, and checked against the manifest's row hashes there
(so an archive forged under the operator key is refused as a same-tenant restore
refuses it). Then, still in that transaction:

1. **Ids.** Every uuid of every staged table (every uuid column but ``tenant_id``, and
   the ids a merge lists in ``merged_ids``, whose records live on only in its snapshot)
   gets a new uuid7, assigned in the order of the old ids, so a list paginated by id
   comes back in the same order. The map is a temporary table (``sandbox_idmap``):
   a tenant's ids need not fit in memory.
2. **Sealed values** (``meridian.encryption.reseal``) are opened with the archive's
   keys under their old associated data (the old tenant and row id) and sealed under
   the new tenant's own new data key with the new ids; blind indexes are computed
   again under it. Merge snapshots hold rows as stored: their sealed values too.
3. **Ids inside text**: every string in a JSONB column, and every text ``*_id`` column
   (actors, requesters), that is an id of the tenant's rows, whole or within a longer
   string (a path), is replaced by its new id; so is every id inside stored files.
4. The rows are written with their uuid columns mapped and the new tenant id, in
   foreign-key order, but for the tables a sandbox does not carry (``NOT_CARRIED``);
   webhook subscriptions are written disabled.

The control plane then gets, in one transaction: the tenant (the original's plan,
limits and event retention, the shard's region), its roles and rules (ids mapped),
a policy version, its data key wrapped under the KEK, a first client made as
onboarding makes one, and the directory entry last. A failure there deletes the shard
rows again, as for a same-tenant restore.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meridian.admin.schemas import Slug
from meridian.backups.archive import OpenedArchive, OperatorKey, read_archive
from meridian.backups.errors import ImportRefused
from meridian.backups.service import (
    RESIDENCY_TABLE,
    BackupDeps,
    check_schema,
    check_writable,
    control_owner,
    driver_of,
    make_workdir,
    remove_dir,
    session_settings,
    shard_admin,
    target_shard,
)
from meridian.encryption.fields import SENSITIVE, FieldUnreadable
from meridian.encryption.reseal import (
    CUSTOM_VALUES,
    FILE_CHUNKS,
    FILES,
    Ciphers,
    reseal_custom,
    reseal_custom_value,
    reseal_export_filter,
    reseal_fields,
)
from meridian.ids import new_id
from meridian.oauth.clients import create_client
from meridian.principal import TENANT_SCOPES
from meridian.transfers.files import FileUnreadable, file_cipher, seal, unseal
from sharding import verify
from sharding.catalog import quote_ident, tenant_tables
from sharding.engines import ShardInfo
from sharding.placement import dedicated_taken, lock_placement
from sharding.tenant_rows import copy_in, delete_tenant_rows, enter_tenant_rows
from tenancy.context import TenantStatus
from tenancy.crypto import FieldCipher
from tenancy.keyring import DataKey, new_data_key
from tenancy.models import Tenant

# Shard tables a sandbox copy leaves out, and why. Their rows are still staged (their
# ids are in the map, and the archive's row hashes are checked whole).
NOT_CARRIED: Mapping[str, str] = {
    # Replays of the original's requests, for its clients' retries: the sandbox has
    # other clients, and the stored answers name the original's ids and ciphertexts.
    "idempotency_key": "the original's request replays",
    # What was sent to the original's receivers: a sandbox delivers nothing of it
    # again (its subscriptions are copied disabled).
    "webhook_delivery": "the original's deliveries",
    # Fulfilment calls other systems (orders, invoices): a copy of its configuration
    # would call them for the sandbox's won deals, and a copied saga would be resumed
    # or compensated, repeating or undoing what was done for the original.
    "fulfilment_config": "calls the original's systems",
    "fulfilment_saga": "the original's side effects",
    "fulfilment_step": "the original's side effects",
    "fulfilment_unfinished": "the original's side effects",
}
# JSONB arrays of ids of the tenant's records that may exist nowhere else (a merge's
# merged records: deleted, but an undo brings them back with these ids).
ID_LISTS: tuple[tuple[str, str], ...] = (("merge_record", "merged_ids"),)
# Text columns named like ids that hold something else: another system's identifier.
NOT_IDS = frozenset({"external_id"})
# Control-plane rows a sandbox copy is made from (clients and token revocations are
# the original's: the sandbox gets a first client of its own).
CONTROL_CARRIED = ("tenant", "tenant_role", "casbin_rule")
DISABLED_REASON = "sandbox copy: subscriptions are disabled until enabled again"
STAGED = "sandbox_"
IDMAP = "sandbox_idmap"
BATCH = 500
_UUID = "[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
# A uuid as a token of its own (not the middle of a longer hex string).
_UUID_TEXT = re.compile(rf"(?<![0-9A-Fa-f-]){_UUID}(?![0-9A-Fa-f-])")
_UUID_BYTES = re.compile(_UUID_TEXT.pattern.encode())
_SLUG = TypeAdapter(Slug)


def _staged(table: str) -> str:
    return quote_ident(STAGED + table)


@dataclass
class _Counts:
    rows: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)
    ids: int = 0
    resealed: int = 0


# -- the id map ----------------------------------------------------------------------------


async def _uuid_columns(conn: asyncpg.Connection, tables: Sequence[str]) -> dict[str, list[str]]:
    """Per table, its uuid columns but ``tenant_id``, and its text columns holding ids
    and JSONB columns: ``{table: [...]}`` for each of ``uuid``, ``text``."""
    rows = await conn.fetch(
        "SELECT c.relname AS t, a.attname AS c, format_type(a.atttypid, NULL) AS ty "
        "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relname = ANY($1::text[]) AND a.attnum > 0 "
        "AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY c.relname, a.attnum",
        list(tables),
    )
    found: dict[str, list[str]] = {}
    for r in rows:
        if r["ty"] == "uuid" and r["c"] != "tenant_id":
            found.setdefault(f"uuid:{r['t']}", []).append(r["c"])
        elif r["ty"] == "jsonb" or (
            r["ty"] in ("text", "character varying")
            and r["c"].endswith("_id")
            and r["c"] not in NOT_IDS
        ):
            found.setdefault(f"text:{r['t']}", []).append(r["c"])
    return found


async def _build_map(
    conn: asyncpg.Connection,
    tables: Sequence[str],
    columns: Mapping[str, list[str]],
    old_tenant: UUID,
    new_tenant: UUID,
) -> int:
    """``sandbox_idmap``: every id of the staged rows → a new uuid7, in the old ids'
    order (new ids are generated in increasing order, checked). The ids mapped."""
    await conn.execute(
        f"CREATE TEMP TABLE {IDMAP} (old uuid PRIMARY KEY, new uuid NOT NULL) ON COMMIT DROP"
    )
    parts = [
        f"SELECT {quote_ident(c)} AS u FROM {_staged(t)}"  # noqa: S608
        for t in tables
        for c in columns.get(f"uuid:{t}", [])
    ]
    parts += [
        f"SELECT (jsonb_array_elements_text({quote_ident(c)}))::uuid FROM {_staged(t)}"  # noqa: S608
        for t, c in ID_LISTS
        if t in tables
    ]
    union = " UNION ALL ".join(parts)
    sql = f"SELECT DISTINCT u FROM ({union}) AS ids WHERE u IS NOT NULL ORDER BY u"  # noqa: S608
    last: UUID | None = None
    count = 0
    batch: list[tuple[UUID, UUID]] = []
    async for row in conn.cursor(sql, prefetch=5000):
        new = new_id()
        while last is not None and new <= last:  # uuid7 is monotonic here; never trusted
            new = new_id()
        last = new
        batch.append((row["u"], new))
        if len(batch) >= 5000:
            await conn.copy_records_to_table(IDMAP, records=batch, columns=["old", "new"])
            count += len(batch)
            batch = []
    # The tenant's own id, where text names it (an event's payload, a rule's domain).
    batch.append((old_tenant, new_tenant))
    await conn.copy_records_to_table(IDMAP, records=batch, columns=["old", "new"])
    return count + len(batch) - 1


async def _lookup(conn: asyncpg.Connection, candidates: set[str]) -> dict[str, str]:
    """New ids of those of ``candidates`` (uuid text) that are old ids, by lower-case text."""
    if not candidates:
        return {}
    rows = await conn.fetch(
        f"SELECT old::text AS o, new::text AS n FROM {IDMAP} WHERE old = ANY($1::uuid[])",  # noqa: S608
        [UUID(c) for c in candidates],
    )
    return {r["o"]: r["n"] for r in rows}


def _rewrite_text(value: str, ids: Mapping[str, str]) -> str:
    return _UUID_TEXT.sub(lambda m: ids.get(m.group().lower(), m.group()), value)


async def _rewrite_file(conn: asyncpg.Connection, source: Path, target: Path) -> None:
    """A COPY file with every id of the tenant in it replaced (the control rows, read
    while the map exists). Small files: the tenant's control rows."""
    data = await asyncio.to_thread(source.read_bytes)
    found = {m.group().decode().lower() for m in _UUID_BYTES.finditer(data)}
    ids = {k.encode(): v.encode() for k, v in (await _lookup(conn, found)).items()}
    out = _UUID_BYTES.sub(lambda m: ids.get(m.group().lower(), m.group()), data)
    await asyncio.to_thread(target.write_bytes, out)


# -- passes over the staged rows -----------------------------------------------------------


async def _batches(
    conn: asyncpg.Connection, sql: str, *args: Any
) -> AsyncIterator[list[asyncpg.Record]]:
    """The rows of ``sql`` a batch at a time. A cursor reads the rows as they were when
    it opened, so the pass's own updates (new row versions) are not read again."""
    cursor = await conn.cursor(sql, *args)
    while rows := await cursor.fetch(BATCH):
        yield rows


async def _update(
    conn: asyncpg.Connection,
    table: str,
    ctids: list[Any],
    values: Mapping[str, tuple[str, list[Any]]],
) -> None:
    """Rows of a staged table, by ctid (read by the same pass's cursor), set to
    ``values``: column → (SQL type, one value per ctid)."""
    names = list(values)
    # JSONB travels as text (asyncpg has no codec for it here) and is cast back.
    sets = ", ".join(
        f"{quote_ident(c)} = u.{quote_ident(c)}" + ("::jsonb" if values[c][0] == "jsonb" else "")
        for c in names
    )
    arrays = ", ".join(
        f"${i + 2}::{'text' if values[c][0] == 'jsonb' else values[c][0]}[]"
        for i, c in enumerate(names)
    )
    cols = ", ".join(quote_ident(c) for c in names)
    await conn.execute(
        f"UPDATE {_staged(table)} AS s SET {sets} FROM unnest($1::tid[], {arrays}) "  # noqa: S608
        f"AS u(ctid_, {cols}) WHERE s.ctid = ANY($1::tid[]) AND s.ctid = u.ctid_",
        ctids,
        *(values[c][1] for c in names),
    )


async def _reseal_fields(
    conn: asyncpg.Connection, table: str, old: Ciphers, new: FieldCipher
) -> int:
    fields = SENSITIVE[table]
    enc = ", ".join(f"s.{quote_ident(f + '_enc')}" for f in fields)
    sql = (
        f"SELECT s.ctid, s.id, m.new, {enc} FROM {_staged(table)} s "  # noqa: S608
        f"JOIN {IDMAP} m ON m.old = s.id WHERE s.enc_version IS NOT NULL"
    )
    done = 0
    async for rows in _batches(conn, sql):
        sealed = [reseal_fields(table, r, old, new, r["new"]) for r in rows]
        values: dict[str, tuple[str, list[Any]]] = {}
        for i, f in enumerate(fields):
            values[f"{f}_enc"] = ("bytea", [s[2 * i] for s in sealed])
            values[f"{f}_bidx"] = ("bytea", [s[2 * i + 1] for s in sealed])
        values["enc_version"] = ("int", [new.version] * len(rows))
        await _update(conn, table, [r["ctid"] for r in rows], values)
        done += len(rows)
    return done


async def _reseal_custom(
    conn: asyncpg.Connection, table: str, old: Ciphers, new: FieldCipher
) -> int:
    """The sealed values in the records' ``custom`` (merged in: the other values'
    JSON stays as stored)."""
    sql = (
        f"SELECT s.ctid, s.id, m.new, s.custom::text AS custom FROM {_staged(table)} s "  # noqa: S608
        f"JOIN {IDMAP} m ON m.old = s.id WHERE s.custom::text LIKE '%\"sealed\"%'"
    )
    done = 0
    async for rows in _batches(conn, sql):
        patches = [
            reseal_custom(table, orjson.loads(r["custom"]), r["id"], old, new, r["new"])
            for r in rows
        ]
        await conn.execute(
            f"UPDATE {_staged(table)} AS s SET custom = s.custom || u.patch::jsonb "  # noqa: S608
            "FROM unnest($1::tid[], $2::text[]) AS u(ctid_, patch) "
            "WHERE s.ctid = ANY($1::tid[]) AND s.ctid = u.ctid_",
            [r["ctid"] for r in rows],
            [orjson.dumps(p).decode() for p in patches],
        )
        done += sum(len(p) for p in patches)
    return done


async def _reseal_custom_values(conn: asyncpg.Connection, old: Ciphers, new: FieldCipher) -> int:
    sql = (
        f"SELECT v.ctid, v.record_id, v.field_id, v.sealed_value, m.new, d.object, d.name, "  # noqa: S608
        f"d.type, d.is_unique FROM {_staged(CUSTOM_VALUES)} v "
        f"JOIN {_staged('field_definition')} d ON d.id = v.field_id "
        f"JOIN {IDMAP} m ON m.old = v.record_id WHERE v.sealed_value IS NOT NULL"
    )
    done = 0
    async for rows in _batches(conn, sql):
        values = [reseal_custom_value(r, old, new, r["new"]) for r in rows]
        await _update(
            conn,
            CUSTOM_VALUES,
            [r["ctid"] for r in rows],
            {
                "sealed_value": ("text", [v["sealed"] for v in values]),
                "bidx": ("bytea", [v["bidx"] for v in values]),
                "unique_value": (
                    "text",
                    [v["bidx"].hex() if v["unique"] else None for v in values],
                ),
                "key_version": ("smallint", [new.version] * len(values)),
            },
        )
        done += len(rows)
    return done


async def _reseal_export_filters(conn: asyncpg.Connection, old: Ciphers, new: FieldCipher) -> int:
    sql = (
        f"SELECT e.ctid, e.id, m.new, e.filter_enc FROM {_staged('data_export')} e "  # noqa: S608
        f"JOIN {IDMAP} m ON m.old = e.id WHERE e.filter_enc IS NOT NULL"
    )
    done = 0
    async for rows in _batches(conn, sql):
        sealed = [
            reseal_export_filter(bytes(r["filter_enc"]), r["id"], old, new, r["new"]) for r in rows
        ]
        await _update(
            conn, "data_export", [r["ctid"] for r in rows], {"filter_enc": ("bytea", sealed)}
        )
        done += len(rows)
    return done


class FileResealer:
    """A stored file's chunks opened with the key they were sealed under and sealed
    again under ``new`` for file ``new_file_id`` (the chunk's seq and raw offset are
    bound into its associated data and stay as they were). Blocking (zlib, AES): run
    its calls in a thread."""

    def __init__(
        self, file_id: UUID, version: int, old: Ciphers, new: FieldCipher, new_file_id: UUID
    ) -> None:
        cipher = old.get(version)
        if cipher is None:
            raise FieldUnreadable(FILES, "content", file_id, "KeyError")
        self._file_id, self._old_tenant = file_id, cipher.tenant_id
        self._new_file_id, self._new_tenant = new_file_id, new.tenant_id
        self._old, self._new = file_cipher(cipher, file_id), file_cipher(new, new_file_id)

    def open(self, seq: int, offset: int, data: bytes) -> bytes:
        try:
            return unseal(self._old, self._old_tenant, self._file_id, seq, offset, data)
        except FileUnreadable as exc:
            raise FieldUnreadable(FILES, "content", self._file_id, type(exc).__name__) from exc

    def seal(self, seq: int, offset: int, raw: bytes) -> bytes:
        return seal(self._new, self._new_tenant, self._new_file_id, seq, offset, raw)


async def _reseal_files(conn: asyncpg.Connection, old: Ciphers, new: FieldCipher) -> int:
    """Every stored file's chunks opened with the archive's key, the ids of the tenant
    in them replaced (an export lists its records' ids; an import's upload may name
    them), and sealed again under the new key and file id, a chunk at a time."""
    files = await conn.fetch(
        f"SELECT f.id, f.key_version, m.new FROM {_staged(FILES)} f "  # noqa: S608
        f"JOIN {IDMAP} m ON m.old = f.id WHERE f.key_version IS NOT NULL ORDER BY f.id"
    )
    done = 0
    for f in files:
        resealer = FileResealer(f["id"], int(f["key_version"]), old, new, f["new"])
        sql = (
            f"SELECT ctid, seq, raw_offset, data FROM {_staged(FILE_CHUNKS)} "  # noqa: S608
            "WHERE file_id = $1 ORDER BY seq"
        )
        # Each chunk is sealed once the next is open: an id may straddle the two.
        previous = b""
        pending: tuple[Any, int, int, bytes] | None = None
        async for rows in _batches(conn, sql, f["id"]):
            for r in rows:
                raw = await asyncio.to_thread(
                    resealer.open, r["seq"], r["raw_offset"], bytes(r["data"])
                )
                if pending is not None:
                    await _reseal_chunk(conn, resealer, pending, previous, raw)
                    previous = pending[3]
                    done += 1
                pending = (r["ctid"], r["seq"], r["raw_offset"], raw)
        if pending is not None:
            await _reseal_chunk(conn, resealer, pending, previous, b"")
            done += 1
    await conn.execute(
        f"UPDATE {_staged(FILES)} SET key_version = $1 WHERE key_version IS NOT NULL",  # noqa: S608
        new.version,
    )
    return done


async def _reseal_chunk(
    conn: asyncpg.Connection,
    resealer: FileResealer,
    chunk: tuple[Any, int, int, bytes],
    previous: bytes,
    following: bytes,
) -> None:
    ctid, seq, offset, raw = chunk
    changed = await _rewrite_chunk(conn, previous, raw, following)
    sealed = await asyncio.to_thread(resealer.seal, seq, offset, changed)
    await _update(conn, FILE_CHUNKS, [ctid], {"data": ("bytea", [sealed])})


async def _rewrite_chunk(
    conn: asyncpg.Connection, previous: bytes, raw: bytes, following: bytes
) -> bytes:
    """``raw`` with the ids of the tenant in it replaced, those straddling its
    boundaries too (seen with the end of the chunk before and the start of the one
    after, as stored). A new id has the old one's length: offsets stay valid."""
    before, after = previous[-36:], following[:36]
    window = before + raw + after
    matches = [
        m
        for m in _UUID_BYTES.finditer(window)
        if m.start() < len(before) + len(raw) and m.end() > len(before)
    ]
    if not matches:
        return raw
    ids = await _lookup(conn, {m.group().decode().lower() for m in matches})
    out = bytearray(raw)
    for m in matches:
        new = ids.get(m.group().decode().lower())
        if new is None:
            continue
        for i, byte in enumerate(new.encode()):
            at = m.start() + i - len(before)
            if 0 <= at < len(out):
                out[at] = byte
    return bytes(out)


async def _reseal_merges(
    conn: asyncpg.Connection, old: Ciphers, new: FieldCipher, fields: Mapping[UUID, Any]
) -> int:
    """A merge's snapshot holds the rows as stored (for its undo): their sealed values
    are sealed again for the rows' new ids, each patched in place by its path."""
    sql = (
        f"SELECT ctid, kind, snapshot::text AS snapshot FROM {_staged('merge_record')} "  # noqa: S608
        "WHERE snapshot IS NOT NULL"
    )
    done = 0
    async for rows in _batches(conn, sql):
        for r in rows:
            snapshot = orjson.loads(r["snapshot"])
            patches = await _snapshot_patches(conn, r["kind"], snapshot, old, new, fields)
            if not patches:
                continue
            expr, args = "snapshot", [r["ctid"]]
            for path, value in patches:
                args += [path, orjson.dumps(value).decode()]
                expr = f"jsonb_set({expr}, ${len(args) - 1}::text[], ${len(args)}::jsonb)"
            await conn.execute(
                f"UPDATE {_staged('merge_record')} SET snapshot = {expr} WHERE ctid = $1",  # noqa: S608
                *args,
            )
            done += len(patches)
    return done


async def _snapshot_patches(
    conn: asyncpg.Connection,
    kind: str,
    snapshot: Mapping[str, Any],
    old: Ciphers,
    new: FieldCipher,
    fields: Mapping[UUID, Any],
) -> list[tuple[list[str], Any]]:
    rows: list[tuple[list[str], Mapping[str, Any]]] = []
    if isinstance(snapshot.get("survivor"), dict):
        rows.append((["survivor"], snapshot["survivor"]))
    rows += [(["merged", str(i)], r) for i, r in enumerate(snapshot.get("merged") or [])]
    values = [
        (["custom_values", str(i)], r) for i, r in enumerate(snapshot.get("custom_values") or [])
    ]
    wanted = {str(r["id"]) for _, r in rows} | {str(v["record_id"]) for _, v in values}
    ids = {UUID(k): UUID(v) for k, v in (await _lookup(conn, wanted)).items()}
    patches: list[tuple[list[str], Any]] = []
    for path, stored in rows:
        row_id = UUID(str(stored["id"]))
        enc = [f for f in SENSITIVE.get(kind, ()) if stored.get(f"{f}_enc") is not None]
        if enc:
            as_stored = {"id": row_id} | {
                f"{f}_enc": _b64(stored.get(f"{f}_enc")) for f in SENSITIVE[kind]
            }
            sealed = reseal_fields(kind, as_stored, old, new, ids[row_id])
            for i, f in enumerate(SENSITIVE[kind]):
                patches.append(([*path, f"{f}_enc"], _text(sealed[2 * i])))
                patches.append(([*path, f"{f}_bidx"], _text(sealed[2 * i + 1])))
            patches.append(([*path, "enc_version"], new.version))
        custom = stored.get("custom")
        if isinstance(custom, dict):
            for name, value in reseal_custom(kind, custom, row_id, old, new, ids[row_id]).items():
                patches.append(([*path, "custom", name], value))
    for path, stored in values:
        if stored.get("sealed_value") is None:
            continue
        definition = fields[UUID(str(stored["field_id"]))]
        record_id = UUID(str(stored["record_id"]))
        v = reseal_custom_value(
            {**definition, **stored, "record_id": record_id}, old, new, ids[record_id]
        )
        patches.append(([*path, "sealed_value"], v["sealed"]))
        patches.append(([*path, "bidx"], _text(v["bidx"])))
        patches.append(([*path, "unique_value"], v["bidx"].hex() if v["unique"] else None))
        patches.append(([*path, "key_version"], new.version))
    return patches


def _b64(value: Any) -> bytes | None:
    return None if value is None else base64.b64decode(str(value))


def _text(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


async def _rewrite_ids(conn: asyncpg.Connection, table: str, columns: Sequence[str]) -> int:
    """Ids of the tenant inside ``columns`` (JSONB, text ids) replaced; rows changed."""
    texts = ", ".join(f"{quote_ident(c)}::text AS {quote_ident(c)}" for c in columns)
    where = " OR ".join(f"{quote_ident(c)}::text ~ '{_UUID}'" for c in columns)
    sql = f"SELECT ctid, {texts} FROM {_staged(table)} WHERE {where}"  # noqa: S608
    types = dict(
        await conn.fetch(
            "SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a "
            "WHERE a.attrelid = $1::regclass AND a.attname = ANY($2::text[])",
            STAGED + table,
            list(columns),
        )
    )
    done = 0
    async for rows in _batches(conn, sql):
        found = {
            m.group().lower()
            for r in rows
            for c in columns
            if r[c] is not None
            for m in _UUID_TEXT.finditer(r[c])
        }
        ids = await _lookup(conn, found)
        if not ids:
            continue
        changed = []
        for r in rows:
            new = {c: _rewrite_text(r[c], ids) if r[c] is not None else None for c in columns}
            if any(new[c] != r[c] for c in columns):
                changed.append((r["ctid"], new))
        if changed:
            await _update(
                conn,
                table,
                [ctid for ctid, _ in changed],
                {
                    c: ("jsonb" if types[c] == "jsonb" else "text", [n[c] for _, n in changed])
                    for c in columns
                },
            )
            done += len(changed)
    return done


# -- the shard -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    old_tenant: UUID
    new_tenant: UUID
    shard: ShardInfo
    admin_dsn: str
    old: dict[int, FieldCipher]
    new: FieldCipher


async def _stage(conn: asyncpg.Connection, opened: OpenedArchive, tables: Sequence[str]) -> None:
    """The archive's rows in temporary tables shaped as the shard's, then checked
    against the manifest's row counts and hashes (the source's own rows)."""
    entries = {e.name: e for e in opened.manifest.of("shard")}
    for table in tables:
        await conn.execute(
            f"CREATE TEMP TABLE {_staged(table)} (LIKE {quote_ident(table)} "
            "INCLUDING DEFAULTS INCLUDING GENERATED) ON COMMIT DROP"
        )
        entry = entries[table]
        rows = await copy_in(conn, STAGED + table, entry.columns, opened.files[entry.member])
        if rows != entry.rows:
            raise ImportRefused(f"{table}: {rows} rows read of the archive's {entry.rows}")
    sums = await verify.checksums(conn, [STAGED + t for t in tables], opened.manifest.tenant_id)
    differ = [t for t in tables if sums[STAGED + t] != (entries[t].rows, entries[t].row_hash)]
    if differ:
        raise ImportRefused(f"the archived rows of {', '.join(differ)} differ from the source's")


async def _field_definitions(conn: asyncpg.Connection) -> dict[UUID, dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT id, object, name, type, is_unique FROM {_staged('field_definition')}"  # noqa: S608
    )
    return {r["id"]: dict(r) for r in rows}


async def _restore_shard(
    conn: asyncpg.Connection, opened: OpenedArchive, target: _Target, workdir: Path
) -> tuple[_Counts, dict[str, Path]]:
    """The sandbox's shard rows in one transaction; the control files rewritten with
    its ids (read while the map exists)."""
    counts = _Counts()
    entries = opened.manifest.of("shard")
    async with conn.transaction():
        # The new tenant's rows are written under forced row-level security (see
        # enter_tenant_rows); the staged copies are temporary tables without it.
        await enter_tenant_rows(conn, target.new_tenant)
        tables = [t for t in await tenant_tables(conn) if t != RESIDENCY_TABLE]
        if sorted(tables) != sorted(e.name for e in entries):
            raise ImportRefused(f"shard {target.shard.id} does not have the archive's tables")
        await _stage(conn, opened, tables)
        columns = await _uuid_columns(conn, tables)
        counts.ids = await _build_map(conn, tables, columns, target.old_tenant, target.new_tenant)
        old, new = target.old, target.new
        # Sealed values first: they are opened under the old ids, which the next step
        # replaces inside text.
        for table in SENSITIVE:
            counts.resealed += await _reseal_fields(conn, table, old, new)
        for table in tables:
            if "custom" in columns.get(f"text:{table}", []):
                counts.resealed += await _reseal_custom(conn, table, old, new)
        counts.resealed += await _reseal_custom_values(conn, old, new)
        counts.resealed += await _reseal_export_filters(conn, old, new)
        counts.resealed += await _reseal_files(conn, old, new)
        counts.resealed += await _reseal_merges(conn, old, new, await _field_definitions(conn))
        for table in tables:
            if columns.get(f"text:{table}"):
                await _rewrite_ids(conn, table, columns[f"text:{table}"])
        await conn.execute(
            f"UPDATE {_staged('webhook')} SET enabled = false, disabled_reason = $1, "  # noqa: S608
            "disabled_at = now()",
            DISABLED_REASON,
        )
        await conn.execute(
            f"INSERT INTO {RESIDENCY_TABLE} (tenant_id, epoch, writable) VALUES ($1, 1, true)",  # noqa: S608
            target.new_tenant,
        )
        copied = {e.name: e.columns for e in entries}
        for table in tables:  # the target's foreign-key order
            if table in NOT_CARRIED:
                n = await conn.fetchval(f"SELECT count(*) FROM {_staged(table)}")  # noqa: S608
                if n:
                    counts.left_out[table] = int(n)
                continue
            uuids = set(columns.get(f"uuid:{table}", []))
            exprs = [
                "$1::uuid"
                if c == "tenant_id"
                else f"(SELECT m.new FROM {IDMAP} m WHERE m.old = s.{quote_ident(c)})"  # noqa: S608
                if c in uuids
                else f"s.{quote_ident(c)}"
                for c in copied[table]
            ]
            names = ", ".join(quote_ident(c) for c in copied[table])
            status = await conn.execute(
                f"INSERT INTO {quote_ident(table)} ({names}) "  # noqa: S608
                f"SELECT {', '.join(exprs)} FROM {_staged(table)} AS s",
                target.new_tenant,
            )
            written = int(status.split()[-1])
            if written:
                counts.rows[table] = written
        control: dict[str, Path] = {}
        for entry in opened.manifest.of("control"):
            if entry.name in CONTROL_CARRIED:
                path = workdir / f"sandbox.{entry.name}.copy"
                await _rewrite_file(conn, opened.files[entry.member], path)
                control[entry.name] = path
    return counts, control


# -- the control plane ---------------------------------------------------------------------


async def _stage_control(
    driver: asyncpg.Connection, table: str, cols: Sequence[str], path: Path
) -> None:
    names = ", ".join(quote_ident(c) for c in cols)
    await driver.execute(
        f"CREATE TEMP TABLE {_staged(table)} ON COMMIT DROP AS "  # noqa: S608
        f"SELECT {names} FROM {quote_ident(table)} WITH NO DATA"
    )
    await copy_in(driver, STAGED + table, cols, path)


async def _restore_control(
    conn: AsyncConnection,
    opened: OpenedArchive,
    target: _Target,
    files: Mapping[str, Path],
    slug: str,
    name: str,
    key: DataKey,
    deps: BackupDeps,
) -> dict[str, Any]:
    """The sandbox's control rows in the caller's transaction, the directory entry
    last; its first client (id, secret, scope)."""
    tenant_id = target.new_tenant
    await session_settings(conn)
    await lock_placement(conn)
    if await dedicated_taken(conn, target.shard):
        raise ImportRefused(f"shard {target.shard.id} is dedicated and holds a tenant")
    driver = await driver_of(conn)
    entries = {e.name: e for e in opened.manifest.of("control")}
    for table in CONTROL_CARRIED:
        await _stage_control(driver, table, entries[table].columns, files[table])
    # The original's plan, limits and event retention; the shard's region.
    made = await driver.execute(
        "INSERT INTO tenant (id, slug, name, region, status, plan, limits, event_retention_days) "  # noqa: S608
        f"SELECT $1, $2, $3, $4, $5, plan, limits, event_retention_days FROM {_staged('tenant')}",
        tenant_id,
        slug,
        name,
        target.shard.region,
        TenantStatus.ACTIVE.value,
    )
    if made != "INSERT 0 1":
        raise ImportRefused("the archive's control rows do not hold its tenant")
    # Roles and rules: the tenant's id and its users' are the new ones already.
    await driver.execute(
        "INSERT INTO tenant_role (tenant_id, name, kind, description, created_at, updated_at) "  # noqa: S608
        f"SELECT $1, name, kind, description, created_at, updated_at "
        f"FROM {_staged('tenant_role')}",
        tenant_id,
    )
    rule_cols = ", ".join(quote_ident(c) for c in entries["casbin_rule"].columns)
    await driver.execute(
        f"INSERT INTO casbin_rule ({rule_cols}) SELECT {rule_cols} FROM {_staged('casbin_rule')}"  # noqa: S608
    )
    # A tenant no instance has seen: its first policy version.
    await conn.execute(
        text("INSERT INTO policy_version (tenant_id, version) VALUES (:t, 1)"), {"t": tenant_id}
    )
    # Its own data key (the values on the shard are sealed under it already), wrapped
    # under this platform's KEK: the sandbox is crypto-shredded on its own.
    await deps.keyring.restore_keys(conn, tenant_id, [key])
    # Its own credentials, made as onboarding makes a tenant's first client.
    client = await create_client(
        conn,
        name=f"{name} (first client)",
        scope=" ".join(TENANT_SCOPES),
        tenant_id=tenant_id,
        role="admin",
    )
    await conn.execute(
        text("INSERT INTO tenant_directory (tenant_id, shard_id, epoch) VALUES (:t, :s, 1)"),
        {"t": tenant_id, "s": target.shard.id},
    )
    return {
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "scope": client.scope,
    }


# -- the command ---------------------------------------------------------------------------


async def import_as_new(
    deps: BackupDeps,
    archive: Path,
    key: OperatorKey,
    *,
    slug: str,
    name: str | None = None,
    shard: str | None = None,
) -> dict[str, Any]:
    """What `meridian tenants import --as-new` does: the archive restored as a new
    tenant ``slug`` beside the original (which may be live), onto ``shard`` (default:
    where placement puts a new tenant of the archive's region)."""
    started = time.monotonic()
    try:
        slug = _SLUG.validate_python(slug)
    except ValidationError as exc:
        raise ImportRefused(
            f"{slug!r} is not a slug (lower-case letters, digits and dashes, 2 to 63)"
        ) from exc
    workdir = await make_workdir()
    try:
        opened = await asyncio.to_thread(read_archive, archive, key, workdir)
        manifest = opened.manifest
        old_tenant = manifest.tenant_id
        name = name or f"{manifest.tenant['name']} (sandbox)"
        data_key = new_data_key()
        assert data_key.key is not None
        new_tenant = new_id()
        async with control_owner(deps) as control:
            await _check_slug(control, slug)
            info = await target_shard(deps, str(manifest.tenant["region"]), shard)
            async with control.connect() as conn:
                await check_schema(await driver_of(conn), manifest, "the control plane")
                admin_dsn = await conn.scalar(
                    text("SELECT admin_dsn FROM shard WHERE id = :s"), {"s": info.id}
                )
            target = _Target(
                old_tenant=old_tenant,
                new_tenant=new_tenant,
                shard=info,
                admin_dsn=str(admin_dsn),
                old={
                    k.version: FieldCipher(old_tenant, k.version, k.key)
                    for k in opened.keys
                    if k.key is not None
                },
                new=FieldCipher(new_tenant, data_key.version, data_key.key),
            )
            async with shard_admin(target.admin_dsn) as conn:
                await check_schema(conn, manifest, f"shard {info.id}")
                await check_writable(conn, info)
                counts, files = await _restore_shard(conn, opened, target, workdir)
            try:
                async with control.connect() as conn, conn.begin():
                    client = await _restore_control(
                        conn, opened, target, files, slug, name, data_key, deps
                    )
            except BaseException:
                # Nothing of the sandbox may stay on the shard without its control rows.
                async with shard_admin(target.admin_dsn) as conn:
                    await delete_tenant_rows(conn, new_tenant, engine=info.engine)
                raise
        deps.keyring.forget(new_tenant)
        await deps.directory.invalidate(new_tenant)
        await deps.announce_policy(new_tenant, 1)
    finally:
        await remove_dir(workdir)
    return {
        "tenant": str(new_tenant),
        "slug": slug,
        "name": name,
        "copy_of": {"tenant": str(old_tenant), "slug": manifest.tenant["slug"]},
        "shard": info.id,
        "region": info.region,
        "epoch": 1,
        "rows": sum(counts.rows.values()),
        "tables": counts.rows,
        "not_carried": counts.left_out,
        "ids_remapped": counts.ids,
        "values_resealed": counts.resealed,
        "client": client,
        "archive_id": str(manifest.archive_id),
        "archived_at": manifest.created_at.isoformat(),
        "seconds": round(time.monotonic() - started, 3),
    }


async def _check_slug(control: AsyncEngine, slug: str) -> None:
    async with control.connect() as conn:
        holder = (
            await conn.execute(select(Tenant.id, Tenant.status).where(Tenant.slug == slug))
        ).one_or_none()
    if holder is not None:
        raise ImportRefused(
            f"slug {slug!r} belongs to tenant {holder.id} ({holder.status}): a sandbox "
            "copy needs a slug of its own"
        )
