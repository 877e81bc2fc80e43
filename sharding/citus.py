"""Administrative functions of a Citus shard, run on its coordinator with an admin
connection: where a tenant's shard group is, giving a tenant a shard group of its own
(``isolate_tenant_to_new_shard``), moving a group to another worker
(``citus_move_shard_placement``), and distributing the tables of a shard that ran as
plain PostgreSQL with its rows in place (``create_distributed_table``).

Every function that copies rows first checks that the connected role may see every
row: Citus copies shards as the calling role, and a table owner bound by FORCE ROW
LEVEL SECURITY (as every shard's owner is) sees none, so the copy silently leaves the
new shards empty. Measured on Citus 13.2: an isolation run as the owner lost every row
of every tenant of the split shard, and a group move run as the owner lost the moved
tenant's rows; both returned without an error.
"""

from __future__ import annotations

import contextlib
import enum
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from sharding.catalog import TableOrderError, quote_ident, tenant_tables
from sharding.engine import (
    COLOCATION_ANCHOR,
    TENANT_COLUMN,
    ShardEngine,
    detect_engine,
    traits,
)
from sharding.errors import ShardingError

_NODE = re.compile(r"^(?P<host>[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})$")
# Session advisory lock held on the coordinator's database by a running isolation.
_ISOLATION_LOCK = 0x4D49534F  # "MISO"
# Tables of the shard schema that are never distributed (Alembic's bookkeeping).
LOCAL_TABLES = frozenset({"alembic_version"})


class CitusAdminError(ShardingError):
    """An administrative action on a Citus shard was refused before anything changed."""


class NotCitusError(CitusAdminError):
    """The shard's database does not run Citus (or has no workers)."""


class UnknownNodeError(CitusAdminError):
    """The node named is not an active worker of the shard's cluster."""


class UnsafeRoleError(CitusAdminError):
    """The connected role cannot run the action without losing rows, or may not run it."""


class BusyError(CitusAdminError):
    """Another administrative action that must not overlap this one is running."""


class LayoutError(CitusAdminError):
    """The shard's tables are laid out in a way the action cannot safely build on."""


class TransferMode(enum.StrEnum):
    """How Citus copies shards: ``online`` replicates logically and blocks writes only
    for the final switch (needs ``wal_level = logical``; isolation also needs ``citus``
    in ``output_plugin_libraries`` on PostgreSQL 15.19+); ``block_writes`` copies with
    writes to the group blocked throughout."""

    ONLINE = "online"
    BLOCK_WRITES = "block_writes"

    @property
    def citus(self) -> str:
        """The value of Citus's shard_transfer_mode (a fixed literal: the enum type
        lives in the citus schema, which an owner role may not use for casts).

        'auto' replicates logically and refuses tables without a replica identity,
        where 'force_logical' would silently lose their UPDATEs and DELETEs."""
        return "auto" if self is TransferMode.ONLINE else "block_writes"


@dataclass(frozen=True, slots=True)
class Node:
    node_id: int
    host: str
    port: int
    takes_shards: bool

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class GroupPlacement:
    """Where a tenant's shard group is: the shard of the colocation anchor that holds
    the tenant (every colocated table's shard lives with it), its node, and whether the
    group holds that tenant's hash value only."""

    shard: int
    node: str
    alone: bool

    def as_dict(self) -> dict[str, object]:
        return {"shard": self.shard, "node": self.node, "alone": self.alone}


@dataclass(frozen=True, slots=True)
class Isolation:
    before: GroupPlacement
    after: GroupPlacement
    isolated_now: bool
    isolate_seconds: float
    moved_now: bool
    move_seconds: float

    def as_dict(self) -> dict[str, object]:
        return {
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "isolated_now": self.isolated_now,
            "isolate_seconds": round(self.isolate_seconds, 3),
            "moved_now": self.moved_now,
            "move_seconds": round(self.move_seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class TableDistributed:
    table: str
    rows_before: int
    rows_after: int
    distributed_now: bool
    seconds: float


def parse_node(address: str) -> tuple[str, int]:
    """``host:port`` → (host, port); ValueError when it is not one."""
    found = _NODE.match(address)
    if found is None or not 0 < int(found["port"]) < 65536:
        raise ValueError(f"not a host:port node address: {address!r}")
    return found["host"].strip("[]"), int(found["port"])


async def require_citus(conn: asyncpg.Connection, what: str) -> None:
    """Refuses unless the database runs Citus with at least one active worker."""
    if await detect_engine(conn) is not ShardEngine.CITUS:
        raise NotCitusError(
            f"{what} needs Citus: the database has no citus extension "
            "(a superuser runs CREATE EXTENSION citus on the coordinator and every worker, "
            "then registers the workers with citus_add_node)"
        )
    workers = await conn.fetchval(
        "SELECT count(*) FROM pg_dist_node"
        " WHERE noderole = 'primary' AND isactive AND groupid <> 0 AND shouldhaveshards"
    )
    if not workers:
        raise NotCitusError(
            f"{what} needs Citus workers: none is registered and active on the coordinator "
            "(register them with citus_add_node)"
        )


async def require_row_access(conn: asyncpg.Connection, tables: Sequence[str]) -> None:
    """Refuses unless the connected role can copy every row of ``tables``: a superuser,
    or a role with BYPASSRLS (on the coordinator and every worker, where Citus runs the
    copies as the same role) that has the privileges of each table's owner (Citus
    requires ownership)."""
    role = await conn.fetchrow(
        "SELECT current_user AS name, rolsuper, rolbypassrls FROM pg_roles"
        " WHERE rolname = current_user"
    )
    assert role is not None
    if not role["rolsuper"]:
        if not role["rolbypassrls"]:
            raise UnsafeRoleError(
                f"role {role['name']} is bound by the tables' forced row-level security: "
                "Citus would copy none of their rows (and drop them). Connect as a "
                "superuser or as a role with BYPASSRLS that is a member of the owner role"
            )
        not_owned = await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relname = ANY($1::text[])"
            " AND NOT pg_has_role(current_user, c.relowner, 'USAGE') ORDER BY 1",
            list(tables),
        )
        if not_owned:
            raise UnsafeRoleError(
                f"role {role['name']} lacks the privileges of the owner of "
                f"{', '.join(r['relname'] for r in not_owned)}: Citus requires them "
                "(grant it the owner role)"
            )
        unsafe = await conn.fetch(
            "SELECT nodename, nodeport, result FROM run_command_on_workers("
            "$$SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user$$)"
            " WHERE NOT success OR result <> 't'"
        )
        if unsafe:
            where = ", ".join(f"{r['nodename']}:{r['nodeport']}" for r in unsafe)
            raise UnsafeRoleError(
                f"role {role['name']} does not bypass row-level security on worker(s) "
                f"{where}: Citus copies shards there as this role"
            )


async def nodes(conn: asyncpg.Connection) -> list[Node]:
    """The active primary nodes of the cluster, coordinator (group 0) first."""
    rows = await conn.fetch(
        "SELECT nodeid, nodename, nodeport, shouldhaveshards AND groupid <> 0 AS takes"
        " FROM pg_dist_node WHERE noderole = 'primary' AND isactive ORDER BY groupid"
    )
    return [Node(r["nodeid"], r["nodename"], r["nodeport"], r["takes"]) for r in rows]


async def find_worker(conn: asyncpg.Connection, address: str) -> Node:
    """The active worker at ``address`` (``host:port``, as registered with
    citus_add_node); UnknownNodeError when there is none, or it takes no shards."""
    try:
        host, port = parse_node(address)
    except ValueError as exc:
        raise UnknownNodeError(str(exc)) from exc
    all_nodes = await nodes(conn)
    for node in all_nodes:
        if (node.host, node.port) == (host, port):
            if not node.takes_shards:
                raise UnknownNodeError(
                    f"node {address} does not hold tenant shards (the coordinator, or a "
                    "worker set with shouldhaveshards = false)"
                )
            return node
    known = ", ".join(n.address for n in all_nodes if n.takes_shards) or "none"
    raise UnknownNodeError(f"no active worker {address} in the cluster (workers: {known})")


async def tenant_group(conn: asyncpg.Connection, tenant_id: UUID) -> GroupPlacement:
    """Where the tenant's shard group is (see GroupPlacement)."""
    row = await conn.fetchrow(
        "SELECT s.shardid, s.shardminvalue = s.shardmaxvalue AS alone,"
        "       n.nodename, n.nodeport"
        "  FROM pg_dist_shard s"
        "  JOIN pg_dist_placement p ON p.shardid = s.shardid"
        "  JOIN pg_dist_node n ON n.groupid = p.groupid AND n.noderole = 'primary'"
        " WHERE s.shardid = get_shard_id_for_distribution_column($1::regclass, $2::uuid)",
        COLOCATION_ANCHOR,
        tenant_id,
    )
    if row is None:
        raise LayoutError(f"{COLOCATION_ANCHOR} has no shard placement for tenant {tenant_id}")
    return GroupPlacement(row["shardid"], f"{row['nodename']}:{row['nodeport']}", row["alone"])


async def _colocated_tables(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        # relname, not regclass::text: that quotes a keyword ("case").
        "SELECT c.relname AS name FROM pg_dist_partition p"
        " JOIN pg_class c ON c.oid = p.logicalrelid WHERE p.colocationid ="
        " (SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = $1::regclass)"
        " ORDER BY 1",
        COLOCATION_ANCHOR,
    )
    return [r["name"] for r in rows]


async def _forced_rls_tables(conn: asyncpg.Connection, tables: Sequence[str]) -> list[str]:
    """The tables among ``tables`` with row-level security enabled: in the shard schema
    every one of them is also FORCEd (shard_0002), so this is also the set to FORCE again
    after a run that was interrupted inside ``_unforced``."""
    rows = await conn.fetch(
        "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relname = ANY($1::text[]) AND c.relrowsecurity"
        " ORDER BY 1",
        list(tables),
    )
    return [r["relname"] for r in rows]


async def _set_force(conn: asyncpg.Connection, tables: Sequence[str], force: bool) -> None:
    for table in tables:
        quoted = quote_ident(table)
        await conn.execute(f"ALTER TABLE {quoted} {'' if force else 'NO '}FORCE ROW LEVEL SECURITY")


@contextlib.asynccontextmanager
async def _unforced(
    conn: asyncpg.Connection, tables: Sequence[str], mode: TransferMode
) -> AsyncIterator[None]:
    """For an online transfer: the tables' row-level security is not FORCEd while it
    runs. Citus applies the changes made during the copy through a subscription owned
    by a role it makes inside the tables' owner role, with neither SUPERUSER nor
    BYPASSRLS, and PostgreSQL refuses it any table whose RLS applies to it ("cannot
    replicate into relation with row-level security enabled"): measured, the first
    write during an isolation left it waiting for ever. Unforced, RLS does not apply to
    the owner's members; the app role, which owns nothing, stays bound by it. FORCE is
    back before this returns, also on failure; a run killed meanwhile leaves it off
    until the next isolation on the shard (any tenant, even one with nothing left to
    do), which ends with every such table FORCEd."""
    if mode is not TransferMode.ONLINE or not tables:
        yield
        return
    await _set_force(conn, tables, False)
    try:
        yield
    finally:
        await _set_force(conn, tables, True)


async def isolate_tenant(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    *,
    to_node: str | None = None,
    mode: TransferMode = TransferMode.ONLINE,
) -> Isolation:
    """Puts the tenant in a shard group of its own (left as is when it already is),
    then, when ``to_node`` names another worker, moves that group there. Every check
    runs before anything changes."""
    await require_citus(conn, "tenant isolation")
    colocated = await _colocated_tables(conn)
    await require_row_access(conn, colocated)
    target = await find_worker(conn, to_node) if to_node is not None else None
    # One isolation at a time per shard database: one run's FORCE coming back while
    # another's online copy is still running would stall that copy (see _unforced).
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _ISOLATION_LOCK):
        raise BusyError("another isolation or group move is running on this shard; retry")
    try:
        return await _isolate_alone(conn, tenant_id, colocated, target, mode)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _ISOLATION_LOCK)


async def _isolate_alone(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    colocated: Sequence[str],
    target: Node | None,
    mode: TransferMode,
) -> Isolation:
    before = await tenant_group(conn, tenant_id)
    rls_tables = await _forced_rls_tables(conn, colocated)
    if before.alone and (target is None or target.address == before.node):
        # Nothing to copy; FORCE again what an interrupted run may have left unforced.
        unforced = await conn.fetch(
            "SELECT relname FROM pg_class WHERE relname = ANY($1::text[])"
            " AND relnamespace = 'public'::regnamespace AND NOT relforcerowsecurity",
            rls_tables,
        )
        await _set_force(conn, [r["relname"] for r in unforced], True)
        return Isolation(before, before, False, 0.0, False, 0.0)
    async with _unforced(conn, rls_tables, mode):
        return await _isolate(conn, tenant_id, before, target, mode)


async def _isolate(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    before: GroupPlacement,
    target: Node | None,
    mode: TransferMode,
) -> Isolation:

    isolate_seconds = 0.0
    if not before.alone:
        started = time.perf_counter()
        # CASCADE: every table colocated with the anchor is split with it, or Citus
        # refuses ("cannot isolate tenant because ... has colocated tables").
        # The split itself blocks the group's writes, whatever ``mode`` says: Citus's
        # online split stalls for ever on an UPDATE made while it runs ("publisher did
        # not send replica identity column expected by the logical replication target
        # relation", citusdata/citus#6790, open), and every write updates the tenant's
        # event counter. Measured: the split blocks for about a second; the move to
        # another worker, usually the long part, stays online.
        await conn.execute(
            "SELECT isolate_tenant_to_new_shard($1::regclass, $2::uuid, 'CASCADE',"
            f" shard_transfer_mode => '{TransferMode.BLOCK_WRITES.citus}')",
            COLOCATION_ANCHOR,
            tenant_id,
        )
        isolate_seconds = time.perf_counter() - started
    isolated = await tenant_group(conn, tenant_id)

    move_seconds = 0.0
    if target is not None and isolated.node != target.address:
        source = next(n for n in await nodes(conn) if n.address == isolated.node)
        started = time.perf_counter()
        # Moving the anchor's shard moves every shard colocated with it.
        await conn.execute(
            "SELECT citus_move_shard_placement($1::bigint, $2::integer, $3::integer,"
            f" '{mode.citus}')",
            isolated.shard,
            source.node_id,
            target.node_id,
        )
        move_seconds = time.perf_counter() - started
    after = await tenant_group(conn, tenant_id)
    return Isolation(
        before=before,
        after=after,
        isolated_now=not before.alone,
        isolate_seconds=isolate_seconds,
        moved_now=after.node != isolated.node,
        move_seconds=move_seconds,
    )


# -- distributing a plain PostgreSQL shard in place -----------------------------------------


async def _check_layout(conn: asyncpg.Connection, tables: Sequence[str]) -> set[str]:
    """The tables already distributed the way the shard needs (skipped on a re-run);
    LayoutError when one is distributed otherwise, or another table is not local."""
    rows = await conn.fetch(
        # relname, not regclass::text: that quotes a keyword ("case").
        "SELECT c.relname AS name, partmethod::text AS method,"
        " column_to_column_name(logicalrelid, partkey) AS column, colocationid"
        " FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid"
    )
    found = {r["name"]: r for r in rows}
    anchor = found.get(COLOCATION_ANCHOR)
    done: set[str] = set()
    for name in tables:
        row = found.get(name)
        if row is None:
            continue
        if row["method"] != "h" or row["column"] != TENANT_COLUMN:
            raise LayoutError(
                f"table {name} is already distributed otherwise (method {row['method']}, "
                f"column {row['column']}): undistribute it first, as a role that bypasses "
                "row-level security"
            )
        if anchor is None or row["colocationid"] != anchor["colocationid"]:
            raise LayoutError(
                f"table {name} is distributed in another colocation group than "
                f"{COLOCATION_ANCHOR}: its tenants' rows would not be on one worker"
            )
        done.add(name)
    strangers = sorted(set(found) - set(tables))
    if strangers:
        raise LayoutError(f"tables outside the shard schema are distributed: {strangers}")
    return done


async def distribute_tables(conn: asyncpg.Connection) -> list[TableDistributed]:
    """Distributes every tenant table of the database on TENANT_COLUMN, colocated with
    the anchor, in foreign-key order, rows in place; tables already distributed so are
    skipped (so an interrupted run is resumed by running it again). The database gets
    the Citus engine's settings first (new sessions only). Each table is
    converted in its own transaction, with writes to it locked out, and its row count
    compared before and after: a difference rolls that table back."""
    await require_citus(conn, "distributing a shard")
    try:
        tables = await tenant_tables(conn)
    except TableOrderError as exc:
        raise LayoutError(str(exc)) from exc
    await require_row_access(conn, tables)
    done = await _check_layout(conn, tables)
    # First: once a table is distributed, a session without these settings (SET LOCAL
    # app.tenant_id kept off the workers) sees none of its rows there.
    for statement in traits(ShardEngine.CITUS).database_settings_sql():
        await conn.execute(statement)
    results: list[TableDistributed] = []
    for table in tables:
        # The name comes from the catalog and is quoted; counts run as this role, which
        # sees every row (require_row_access).
        quoted = quote_ident(table)
        if table in done:
            rows = await conn.fetchval(f"SELECT count(*) FROM {quoted}")  # noqa: S608
            results.append(TableDistributed(table, rows, rows, False, 0.0))
            continue
        started = time.perf_counter()
        async with conn.transaction():
            # The foreign keys' checks and the copy must not mix parallel and
            # sequential connections to the workers in one transaction.
            await conn.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
            await conn.execute(f"LOCK TABLE {quoted} IN EXCLUSIVE MODE")
            before = await conn.fetchval(f"SELECT count(*) FROM {quoted}")  # noqa: S608
            await conn.execute(
                "SELECT create_distributed_table($1::regclass, $2, colocate_with => $3)",
                table,
                TENANT_COLUMN,
                "none" if table == COLOCATION_ANCHOR else COLOCATION_ANCHOR,
            )
            after = await conn.fetchval(f"SELECT count(*) FROM {quoted}")  # noqa: S608
            if after != before:
                raise LayoutError(
                    f"table {table}: {before} rows before distributing it, {after} after; "
                    "rolled back"
                )
        results.append(TableDistributed(table, before, after, True, time.perf_counter() - started))
    # create_distributed_table copied the rows into the shards and left the
    # coordinator's own copy behind, invisible to queries but on disk. Citus refuses to
    # truncate it while a local table still references it, so only once every table is
    # distributed; referencing tables first (the truncation cascades to them).
    for table in reversed(tables):
        await conn.execute(
            "SELECT truncate_local_data_after_distributing_table($1::regclass)", table
        )
    return results
