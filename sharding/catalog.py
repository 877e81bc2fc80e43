"""What a shard's own catalog says about its tables, for the administrative work that
handles them all at once (moving a tenant between shards, distributing a shard on
Citus): which tables hold tenant rows, in foreign-key order.
"""

from __future__ import annotations

import graphlib

import asyncpg

from sharding.engine import COLOCATION_ANCHOR, TENANT_COLUMN
from sharding.errors import ShardingError

_TENANT_TABLES = (
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $1 AND NOT a.attisdropped"
    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1"
)
_FOREIGN_KEYS = (
    "SELECT DISTINCT src.relname AS child, dst.relname AS parent FROM pg_constraint f"
    " JOIN pg_class src ON src.oid = f.conrelid JOIN pg_class dst ON dst.oid = f.confrelid"
    " JOIN pg_namespace n ON n.oid = src.relnamespace"
    " WHERE f.contype = 'f' AND n.nspname = 'public' AND f.conrelid <> f.confrelid"
)


class TableOrderError(ShardingError):
    """The shard's tenant tables have no foreign-key order with the colocation anchor
    first (a cycle, or a key naming a table without the tenant column)."""


def quote_ident(name: str) -> str:
    """``name`` as an SQL identifier (for names read from the catalog)."""
    return '"' + name.replace('"', '""') + '"'


async def tenant_tables(conn: asyncpg.Connection) -> list[str]:
    """The shard's tenant tables (those with a TENANT_COLUMN), every table after the
    tables its foreign keys name, the colocation anchor (the residency table) first.
    Reversed, it is the order their rows can be deleted in."""
    names = [r["relname"] for r in await conn.fetch(_TENANT_TABLES, TENANT_COLUMN)]
    parents: dict[str, set[str]] = {name: set() for name in names}
    for edge in await conn.fetch(_FOREIGN_KEYS):
        if edge["child"] in parents:
            parents[edge["child"]].add(edge["parent"])
    order = graphlib.TopologicalSorter(parents)
    try:
        order.prepare()
    except graphlib.CycleError as exc:
        raise TableOrderError(f"the foreign keys among {', '.join(names)} form a cycle") from exc
    ordered: list[str] = []
    while order.is_active():
        # Among the tables ready at each step: the anchor first, then by name.
        ready = sorted(order.get_ready(), key=lambda t: (t != COLOCATION_ANCHOR, t))
        ordered.extend(ready)
        order.done(*ready)
    unknown = sorted(set(ordered) - set(names))
    if unknown:
        raise TableOrderError(f"foreign keys name {', '.join(unknown)}, without {TENANT_COLUMN}")
    if ordered[:1] != [COLOCATION_ANCHOR]:
        raise TableOrderError(f"no {COLOCATION_ANCHOR} table, or it depends on another table")
    return ordered
