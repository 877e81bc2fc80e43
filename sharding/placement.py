"""Placement: which shard a new tenant goes to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sharding.engines import ShardInfo


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
