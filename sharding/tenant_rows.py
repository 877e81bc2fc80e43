"""One tenant's rows of a database as COPY data, for the tenant archives that back a
tenant up and restore it (``meridian.backups``): which columns a table's rows are
copied with, copying them out and in, and deleting them.

Copies use PostgreSQL's text format under fixed session settings (``SESSION``), so
the same rows give the same bytes whichever server writes them, and a server at the
same schema revision reads them back as they were stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from sharding.catalog import quote_ident, tenant_tables
from sharding.engine import TENANT_COLUMN

# How rows render as text, whatever the server's defaults: timestamps in UTC and ISO,
# floats exactly, bytea in hex. (The mover's connections use the same settings.)
SESSION: Mapping[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "bytea_output": "hex",
}
DELETE_BATCH = 1000

_COLUMNS = (
    "SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = 'public' AND c.relname = ANY($1::text[]) AND a.attnum > 0 "
    # Generated columns are computed again from the others; COPY cannot write them.
    "AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY c.relname, a.attnum"
)
_PRIMARY_KEY = (
    "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
    "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
    "WHERE i.indisprimary AND n.nspname = 'public' AND c.relname = $1 ORDER BY k.n"
)

Sink = Callable[[bytes], Awaitable[None]]


async def copied_columns(conn: asyncpg.Connection, tables: Sequence[str]) -> dict[str, list[str]]:
    """Per table, the columns its rows are copied with, in the table's order."""
    found: dict[str, list[str]] = {table: [] for table in tables}
    for row in await conn.fetch(_COLUMNS, list(tables)):
        found[row["relname"]].append(row["attname"])
    missing = sorted(t for t, cols in found.items() if not cols)
    if missing:
        raise LookupError(f"no table {', '.join(missing)} in the database")
    return found


async def schema_revision(conn: asyncpg.Connection) -> str:
    """The Alembic revision the database is at (several heads comma-separated)."""
    found = await conn.fetchval(
        "SELECT string_agg(version_num, ',' ORDER BY version_num) FROM alembic_version"
    )
    return str(found or "")


async def copy_out(
    conn: asyncpg.Connection,
    table: str,
    columns: Sequence[str],
    where: str,
    args: Sequence[Any],
    sink: Sink,
) -> int:
    """The rows of ``table`` matching ``where`` (an SQL condition on its columns, with
    ``args`` as $1, $2...) in COPY text format, ordered by primary key when it has one
    (the same rows give the same bytes), handed to ``sink`` chunk by chunk; how many."""
    key = [r["attname"] for r in await conn.fetch(_PRIMARY_KEY, table)]
    order = f" ORDER BY {', '.join(quote_ident(c) for c in key)}" if key else ""
    names = ", ".join(quote_ident(c) for c in columns)
    sql = f"SELECT {names} FROM {quote_ident(table)} WHERE {where}{order}"  # noqa: S608
    status = await conn.copy_from_query(sql, *args, output=sink, format="text")
    return int(status.split()[-1])


async def copy_in(conn: asyncpg.Connection, table: str, columns: Sequence[str], data: Path) -> int:
    """Rows in COPY text format from the file ``data`` into ``table``; the rows written."""
    status = await conn.copy_to_table(table, source=data, columns=list(columns), format="text")
    return int(status.split()[-1])


async def delete_tenant_rows(
    conn: asyncpg.Connection, tenant_id: UUID, *, batch: int = DELETE_BATCH
) -> dict[str, int]:
    """Delete every row of the tenant on ``conn``'s shard in batches, tables referring to
    others first and the residency row last; the rows deleted per table (tables with
    none left out).

    Foreign-key triggers are off (session_replication_role = replica, which needs a
    superuser): a table that refers to itself (accounts' parents, users' managers)
    cannot be deleted in batches otherwise, and every key includes tenant_id, so
    deleting all of one tenant's rows leaves no other row dangling."""
    deleted: dict[str, int] = {}
    await conn.execute("SET session_replication_role = replica")
    try:
        for table in reversed(await tenant_tables(conn)):
            total = 0
            while True:
                status = await conn.execute(
                    f"DELETE FROM {quote_ident(table)} WHERE ctid = ANY(ARRAY("  # noqa: S608
                    f"SELECT ctid FROM {quote_ident(table)} WHERE {TENANT_COLUMN} = $1 "
                    f"LIMIT {int(batch)}))",
                    tenant_id,
                )
                count = int(status.split()[-1])
                total += count
                if count < batch:
                    break
            if total:
                deleted[table] = total
    finally:
        await conn.execute("RESET session_replication_role")
    return deleted
