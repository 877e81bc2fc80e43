"""Comparing one tenant's rows on two shards, for a move's verification (VDiff's idea)
without a write freeze as long as the tenant is large.

A full comparison under the fence reads every row of the tenant on both sides while
its writes wait: seconds for a tenant of a few hundred thousand rows. So the move
compares in two parts:

1. **live**, before the fence, while writes go on: a logical slot on the source marks
   a point first, then every row's hash is compared on both sides (streamed in primary
   key order). Rows that differ are either in flight (written on the source, not yet
   applied on the target) or wrong; their keys are kept.
2. **under the fence**, once the target has applied everything up to it: the row
   counts of every table, and the rows whose keys differed live, or were written on
   the source since the point (read from the slot: the move's publication decodes
   the tenant's changes only), or were written on the target since a transaction-id
   marker taken before the live part (its xmin: a write by anything but the
   subscription shows there too). Any other row was equal when compared live and has
   not changed since on either side. This part reads what changed during the move's
   last seconds, and scans the target's rows for their xmin only.

A truncate, or more differing keys than ``LIVE_KEYS_CAP``, falls back to comparing
everything under the fence.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from sharding.catalog import quote_ident

Key = tuple[str, ...]  # a row's primary key columns, as text
# Beyond this many differing keys in the live part, the fence compares everything.
LIVE_KEYS_CAP = 2000
# Rows per round trip of the live part's cursors.
_PREFETCH = 5000


@dataclass(frozen=True, slots=True)
class TableKey:
    table: str
    columns: tuple[str, ...]  # the primary key's columns, in key order
    types: tuple[str, ...]  # their SQL types (format_type)


async def primary_keys(conn: asyncpg.Connection, tables: Sequence[str]) -> dict[str, TableKey]:
    rows = await conn.fetch(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type, k.n "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
        "JOIN pg_namespace ns ON ns.oid = c.relnamespace "
        "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
        "WHERE i.indisprimary AND ns.nspname = 'public' AND c.relname = ANY($1::text[]) "
        "ORDER BY c.relname, k.n",
        list(tables),
    )
    keys: dict[str, TableKey] = {}
    for table in tables:
        mine = [r for r in rows if r["relname"] == table]
        if not mine:
            raise ValueError(f"table {table} has no primary key to compare rows by")
        keys[table] = TableKey(
            table, tuple(r["attname"] for r in mine), tuple(r["type"] for r in mine)
        )
    return keys


def _hashes_sql(key: TableKey, where: str) -> str:
    cols = ", ".join(f"r.{quote_ident(c)}::text" for c in key.columns)
    # hash_record_extended hashes the row as stored, several times faster than hashing
    # its text; both servers run the same schema revision (the mover checks).
    return (
        f"SELECT {cols}, hash_record_extended(r, 0) FROM {quote_ident(key.table)} AS r "  # noqa: S608
        f"WHERE r.tenant_id = $1 {where}"
    )


async def _stream(
    conn: asyncpg.Connection, key: TableKey, tenant_id: UUID
) -> AsyncGenerator[tuple[Key, int], None]:
    # Ordered as text in the C collation: the order Python compares the keys in.
    order = ", ".join(f'r.{quote_ident(c)}::text COLLATE "C"' for c in key.columns)
    sql = _hashes_sql(key, f"ORDER BY {order}")
    n = len(key.columns)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        async for row in conn.cursor(sql, tenant_id, prefetch=_PREFETCH):
            yield tuple(row[:n]), row[n]


async def live_differences(
    src: asyncpg.Connection,
    dst: asyncpg.Connection,
    keys: Mapping[str, TableKey],
    tenant_id: UUID,
) -> tuple[dict[str, list[Key]] | None, int]:
    """The keys of rows that differ (or are on one side only) per table, compared while
    writes go on, and the rows compared; None instead of the keys when more than
    LIVE_KEYS_CAP differ."""
    differing: dict[str, list[Key]] = {}
    compared = total = 0
    for table, key in keys.items():
        found: list[Key] = []
        here, there = _stream(src, key, tenant_id), _stream(dst, key, tenant_id)
        a = await anext(here, None)
        b = await anext(there, None)
        while a is not None or b is not None:
            compared += 1
            if b is None or (a is not None and a[0] < b[0]):
                assert a is not None
                found.append(a[0])
                a = await anext(here, None)
            elif a is None or b[0] < a[0]:
                found.append(b[0])
                b = await anext(there, None)
            else:
                if a[1] != b[1]:
                    found.append(a[0])
                a, b = await anext(here, None), await anext(there, None)
        total += len(found)
        if total > LIVE_KEYS_CAP:
            # Let the generators finish their transactions before giving up.
            await here.aclose()
            await there.aclose()
            return None, compared
        if found:
            differing[table] = found
    return differing, compared


async def differing_rows(
    src: asyncpg.Connection,
    dst: asyncpg.Connection,
    key: TableKey,
    tenant_id: UUID,
    wanted: set[Key],
) -> list[Key]:
    """Of the rows with keys ``wanted``, those that differ between the two sides (or
    are on one side only)."""
    if not wanted:
        return []
    columns = list(zip(*sorted(wanted), strict=True))
    params = ", ".join(f"${i + 2}::text[]::{t}[]" for i, t in enumerate(key.types))
    names = ", ".join(quote_ident(c) for c in key.columns)
    joined = " AND ".join(f"r.{quote_ident(c)} = k.{quote_ident(c)}" for c in key.columns)
    cols = ", ".join(f"r.{quote_ident(c)}::text" for c in key.columns)
    # Driven by the keys: one primary-key lookup each, not a scan of the tenant's rows.
    sql = (
        f"SELECT {cols}, hash_record_extended(r, 0) FROM unnest({params}) AS k({names}) "  # noqa: S608
        f"JOIN {quote_ident(key.table)} AS r ON {joined} WHERE r.tenant_id = $1"
    )
    args = [list(col) for col in columns]
    n = len(key.columns)

    async def fetch(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        async with conn.transaction(readonly=True):
            # Key lookups, whatever the statistics say: a target whose tables were just
            # filled by the copy may not have been analysed yet, and a sequential scan
            # per key (the plan for "empty" tables) took 25 s for 238 keys at 100,000.
            await conn.execute("SET LOCAL enable_seqscan = off")
            return list(await conn.fetch(sql, tenant_id, *args))

    found_here, found_there = await asyncio.gather(fetch(src), fetch(dst))
    here = {tuple(r[:n]): r[n] for r in found_here}
    there = {tuple(r[:n]): r[n] for r in found_there}
    return sorted(k for k in here.keys() | there.keys() if here.get(k) != there.get(k))


async def xid_marker(conn: asyncpg.Connection) -> str:
    """The oldest transaction id still running on ``conn``'s server, as an ``xid``:
    every row version written from now on (or being written now) has an xmin at
    least this. The target's marker, taken before the live part reads it."""
    return str(
        await conn.fetchval(
            "SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint % 4294967296)::text"
        )
    )


async def rows_written_since(
    conn: asyncpg.Connection, key: TableKey, tenant_id: UUID, marker: str
) -> set[Key]:
    """Keys of the tenant's rows on ``conn``'s shard written since ``marker``
    (:func:`xid_marker`): on the target, nothing but the move's subscription should
    have written any but the changes read from the slot, so this finds a write by
    anything else. (``age`` compares transaction ids across wraparound.)"""
    cols = ", ".join(f"r.{quote_ident(c)}::text" for c in key.columns)
    rows = await conn.fetch(
        f"SELECT {cols} FROM {quote_ident(key.table)} AS r "  # noqa: S608
        "WHERE r.tenant_id = $1 AND age(r.xmin) <= age($2::text::xid)",
        tenant_id,
        marker,
    )
    return {tuple(r) for r in rows}


async def counts(
    conn: asyncpg.Connection, tables: Sequence[str], tenant_id: UUID
) -> dict[str, int]:
    found: dict[str, int] = {}
    for table in tables:
        found[table] = await conn.fetchval(
            f"SELECT count(*) FROM {quote_ident(table)} WHERE tenant_id = $1",  # noqa: S608
            tenant_id,
        )
    return found


async def checksums(
    conn: asyncpg.Connection, tables: Sequence[str], tenant_id: UUID
) -> dict[str, tuple[int, str]]:
    """Per table: the tenant's row count and an order-independent hash of its rows (the
    sum of each row's 64-bit hash), computed by the server: the full comparison."""
    sums: dict[str, tuple[int, str]] = {}
    for table in tables:
        row = await conn.fetchrow(
            f"SELECT count(*) AS n, coalesce(sum(hash_record_extended(r, 0)), 0)::text AS h "  # noqa: S608
            f"FROM {quote_ident(table)} AS r WHERE r.tenant_id = $1",
            tenant_id,
        )
        sums[table] = (int(row["n"]), str(row["h"]))
    return sums


# -- what changed since the slot's point: pgoutput, decoded --------------------------------


class TruncatedError(Exception):
    """A table was truncated since the point: the changed keys cannot be listed."""


async def changed_keys(
    conn: asyncpg.Connection, slot: str, publication: str, upto_lsn: str
) -> dict[str, set[Key]]:
    """Per table, the primary keys of the rows the publication's changes touched from
    the slot's point up to ``upto_lsn`` (peeked: the slot keeps its place). Raises
    TruncatedError for a truncate."""
    rows = await conn.fetch(
        "SELECT data FROM pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, NULL, "
        "'proto_version', '1', 'publication_names', $3)",
        slot,
        upto_lsn,
        publication,
    )
    return decode_changes(bytes(r["data"]) for r in rows)


@dataclass
class _Relation:
    name: str
    key_columns: list[int]  # positions of the replica identity's (primary key's) columns


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def byte(self) -> str:
        value = chr(self.data[self.at])
        self.at += 1
        return value

    def int(self, size: int) -> int:
        fmt = {1: ">b", 2: ">h", 4: ">i"}[size]
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += size
        return int(value)

    def string(self) -> str:
        end = self.data.index(b"\0", self.at)
        value = self.data[self.at : end].decode()
        self.at = end + 1
        return value

    def tuple(self) -> list[str | None]:
        values: list[str | None] = []
        for _ in range(self.int(2)):
            kind = self.byte()
            if kind == "t":
                size = self.int(4)
                values.append(self.data[self.at : self.at + size].decode())
                self.at += size
            else:  # 'n' null, 'u' an unchanged TOASTed value: never a key column
                values.append(None)
        return values


def decode_changes(messages: Iterable[bytes]) -> dict[str, set[Key]]:
    """The keys touched by pgoutput (protocol 1) messages, per table: an insert's and an
    update's new row, an update's and a delete's old key."""
    relations: dict[int, _Relation] = {}
    touched: dict[str, set[Key]] = {}

    def add(rel_id: int, values: list[str | None]) -> None:
        rel = relations[rel_id]
        key = tuple(values[i] or "" for i in rel.key_columns)
        touched.setdefault(rel.name, set()).add(key)

    for data in messages:
        r = _Reader(data)
        kind = r.byte()
        if kind == "R":
            rel_id = r.int(4)
            r.string()  # namespace
            name = r.string()
            r.int(1)  # replica identity setting
            key_columns = []
            for i in range(r.int(2)):
                flags = r.int(1)
                r.string()
                r.int(4)
                r.int(4)
                if flags & 1:
                    key_columns.append(i)
            relations[rel_id] = _Relation(name, key_columns)
        elif kind == "I":
            rel_id = r.int(4)
            r.byte()  # 'N'
            add(rel_id, r.tuple())
        elif kind == "U":
            rel_id = r.int(4)
            part = r.byte()
            if part in ("K", "O"):
                add(rel_id, r.tuple())
                part = r.byte()
            add(rel_id, r.tuple())  # 'N'
        elif kind == "D":
            rel_id = r.int(4)
            r.byte()  # 'K' or 'O'
            add(rel_id, r.tuple())
        elif kind == "T":
            raise TruncatedError("a table was truncated during the move")
        # 'B'egin, 'C'ommit, 'O'rigin, 'Y' (type): nothing to compare.
    return touched
