"""One tenant's rows of a database as COPY data, for the tenant archives that back a
tenant up and restore it (``meridian.backups``): which columns a table's rows are
copied with, copying them out and in, and deleting them.

Copies use PostgreSQL's text format under fixed session settings (``SESSION``), so
the same rows give the same bytes whichever server writes them, and a server at the
same schema revision reads them back as they were stored.

The same statements run on a plain PostgreSQL shard and on a Citus coordinator: each
names the tenant (``tenant_id = $1``), so Citus routes it to the one worker holding
the tenant's shard group, and COPY into a distributed table goes through the
coordinator. Deleting is the one place the engines differ (``delete_tenant_rows``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from sharding.catalog import quote_ident, tenant_tables
from sharding.engine import TENANT_COLUMN, ShardEngine, detect_engine, traits
from sharding.errors import ShardingError

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


class RowAccessError(ShardingError):
    """The connected role cannot write a tenant's rows by COPY: row-level security
    applies to it."""


async def require_copy_in(conn: asyncpg.Connection, engine: ShardEngine | str) -> None:
    """Refuses unless the connected role may COPY rows into the shard's tables: a
    superuser or a role with BYPASSRLS. PostgreSQL refuses COPY FROM into a table whose
    row-level security applies to the role ("COPY FROM not supported with row-level
    security"), and every shard table is under FORCE, which binds its owner too. On
    Citus the rows are copied on the workers as the same role, so it must bypass
    row-level security there as well."""
    role = await conn.fetchrow(
        "SELECT current_user AS name, rolsuper OR rolbypassrls AS bypasses FROM pg_roles"
        " WHERE rolname = current_user"
    )
    assert role is not None
    where: list[str] = (
        []
        if role["bypasses"]
        else ["the coordinator" if traits(engine).distributes_tables else "the shard"]
    )
    if traits(engine).distributes_tables:
        where += [
            f"worker {r['nodename']}:{r['nodeport']}"
            for r in await conn.fetch(
                "SELECT nodename, nodeport FROM run_command_on_workers($$SELECT rolsuper OR"
                " rolbypassrls FROM pg_roles WHERE rolname = current_user$$)"
                " WHERE NOT success OR result <> 't'"
            )
        ]
    if where:
        raise RowAccessError(
            f"role {role['name']} is bound by the shard tables' forced row-level security "
            f"on {', '.join(where)}, and PostgreSQL refuses COPY into them: give the "
            "shard an admin DSN of a superuser or of a role with BYPASSRLS (on every node)"
        )


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


async def enter_tenant_rows(conn: asyncpg.Connection, tenant_id: UUID) -> None:
    """Lets the rest of ``conn``'s transaction see and write the tenant's rows under
    the tables' forced row-level security, whatever the role: a shard's owner (a
    Citus shard's admin role usually is) is bound by it and sees no row without it; a
    superuser is not. ``SET LOCAL``, not ``set_config``: Citus passes only ``SET
    LOCAL`` on to its workers (``citus.propagate_set_commands = 'local'``, a database
    setting of every Citus shard). It takes no parameter, hence the literal, made
    from a UUID."""
    await conn.execute(f"SET LOCAL app.tenant_id = '{UUID(str(tenant_id))}'")


async def delete_tenant_rows(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    *,
    engine: ShardEngine | str | None = None,
    batch: int = DELETE_BATCH,
) -> dict[str, int]:
    """Delete every row of the tenant on ``conn``'s shard, tables referring to others
    first and the residency row last; the rows deleted per table (tables with none
    left out). ``engine`` is the shard's (the topology's); found on the database when
    not given, since the plain way below must never run on distributed tables.

    On plain PostgreSQL, in batches with foreign-key triggers off
    (session_replication_role = replica, which needs a superuser): a table that
    refers to itself (accounts' parents, users' managers) cannot be deleted in
    batches otherwise, and every key includes tenant_id, so deleting all of one
    tenant's rows leaves no other row dangling.

    On Citus, one ``DELETE ... WHERE tenant_id = $1`` per table in one transaction
    (the caller's, or one of its own): each is routed to the tenant's worker, so the
    transaction stays there and commits at once. The batches cannot be used there:
    ``ctid`` names a row only within one shard (the same ctid exists in every shard
    of a table), and session_replication_role is neither propagated to the workers
    nor allowed to the shard's owner. One statement per table needs neither: the
    foreign-key checks of a self-referring table run at its end, once every row of
    the tenant is gone."""
    if engine is None:
        engine = await detect_engine(conn)
    if traits(engine).distributes_tables:
        return await _delete_routed(conn, tenant_id)
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


async def _delete_routed(conn: asyncpg.Connection, tenant_id: UUID) -> dict[str, int]:
    """``delete_tenant_rows`` on a Citus shard (see there)."""
    deleted: dict[str, int] = {}
    async with contextlib.AsyncExitStack() as stack:
        if not conn.is_in_transaction():
            await stack.enter_async_context(conn.transaction())
        await enter_tenant_rows(conn, tenant_id)
        for table in reversed(await tenant_tables(conn)):
            status = await conn.execute(
                f"DELETE FROM {quote_ident(table)} WHERE {TENANT_COLUMN} = $1",  # noqa: S608
                tenant_id,
            )
            count = int(status.split()[-1])
            if count:
                deleted[table] = count
    return deleted
