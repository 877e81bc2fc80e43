"""Plans of several tenant moves: draining a shard, and rebalancing a region's shards by
the size of their tenants. Planning only; the moves run through ``sharding.mover``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from sharding.catalog import quote_ident, tenant_tables


@dataclass(frozen=True, slots=True)
class PlannedMove:
    tenant_id: UUID
    source_shard_id: str
    target_shard_id: str
    rows: int  # the tenant's size when planned: its rows in every tenant table


async def tenant_sizes(conn: asyncpg.Connection) -> dict[UUID, int]:
    """Rows per tenant on ``conn``'s shard, over every tenant table (the residency row
    included, so a tenant without records still counts as one). A full count: the
    plan's input, run once per shard by an admin, not on a hot path."""
    sizes: dict[UUID, int] = {}
    for table in await tenant_tables(conn):
        for row in await conn.fetch(
            f"SELECT tenant_id, count(*) AS n FROM {quote_ident(table)} GROUP BY tenant_id"  # noqa: S608
        ):
            sizes[row["tenant_id"]] = sizes.get(row["tenant_id"], 0) + int(row["n"])
    return sizes


def plan_rebalance(
    loads: Mapping[str, Mapping[UUID, int]], *, tolerance: float = 0.1, max_moves: int = 100
) -> list[PlannedMove]:
    """Moves that even out the rows of ``loads``' shards (shard -> tenant -> rows; all
    of one region, all taking tenants), greedily: from the fullest shard to the
    emptiest, the tenant whose move narrows the gap most, until the gap is within
    ``tolerance`` of the mean load, or no move narrows it (one huge tenant: it wants a
    dedicated shard instead), or ``max_moves`` are planned."""
    if len(loads) < 2:
        return []
    tenants = {shard: dict(held) for shard, held in loads.items()}
    load = {shard: sum(held.values()) for shard, held in tenants.items()}
    mean = sum(load.values()) / len(load)
    planned: list[PlannedMove] = []
    while len(planned) < max_moves:
        # Ties by id, so a plan is the same for the same input.
        fullest = max(load, key=lambda s: (load[s], s))
        emptiest = min(load, key=lambda s: (load[s], s))
        gap = load[fullest] - load[emptiest]
        if gap <= tolerance * mean:
            break
        # Moving n rows turns the gap into |gap - 2n|: only tenants smaller than the gap
        # narrow it, and the best is the one nearest half of it.
        narrowing = [(n, t) for t, n in tenants[fullest].items() if 0 < n < gap]
        if not narrowing:
            break
        rows, tenant = min(narrowing, key=lambda c: (abs(gap - 2 * c[0]), str(c[1])))
        planned.append(PlannedMove(tenant, fullest, emptiest, rows))
        del tenants[fullest][tenant]
        tenants[emptiest][tenant] = rows
        load[fullest] -= rows
        load[emptiest] += rows
    return planned
