"""Placement: which shard a new tenant goes to, and the lock that serialises placement
decisions (an onboarding, a tenant archive's restore) on the control plane."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from uuid import UUID

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from sharding.engines import ShardInfo
from tenancy.models import DirectoryEntry

PLACEMENT_LOCK = 0x504C4143  # "PLAC"


async def lock_placement(conn: AsyncConnection) -> None:
    """Placement decisions one at a time, until ``conn``'s transaction ends: a
    dedicated shard takes one tenant, however many ask at once."""
    await conn.execute(select(func.pg_advisory_xact_lock(PLACEMENT_LOCK)))


async def dedicated_taken(
    conn: AsyncConnection, shard: ShardInfo, tenant_id: UUID | None = None
) -> bool:
    """Whether ``shard`` is dedicated and already holds a tenant (other than
    ``tenant_id``); to be asked under ``lock_placement``."""
    if not shard.dedicated:
        return False
    stmt = (
        select(func.count()).select_from(DirectoryEntry).where(DirectoryEntry.shard_id == shard.id)
    )
    if tenant_id is not None:
        stmt = stmt.where(DirectoryEntry.tenant_id != tenant_id)
    return bool(await conn.scalar(stmt))


class PlacementError(Exception):
    pass


def choose_shard(
    shards: Sequence[ShardInfo], tenant_counts: Mapping[str, int], region: str
) -> ShardInfo:
    """The least-loaded active shared shard of ``region`` (by fill ratio, then id for
    stability). Dedicated shards are only ever named explicitly."""
    candidates = [
        s
        for s in shards
        if s.region == region
        and s.state == "active"
        and not s.dedicated
        and tenant_counts.get(s.id, 0) < s.capacity
    ]
    if not candidates:
        raise PlacementError(f"no active shard with free capacity in region {region!r}")
    return min(candidates, key=lambda s: (tenant_counts.get(s.id, 0) / s.capacity, s.id))
