"""Placement policy: least-loaded active shard of the region, never over capacity."""

from __future__ import annotations

import pytest

from sharding.engines import ShardInfo
from sharding.placement import PlacementError, choose_shard

SHARDS = [
    ShardInfo("us-1", "us", "dsn", "active", capacity=100),
    ShardInfo("us-2", "us", "dsn", "active", capacity=400),
    ShardInfo("us-3", "us", "dsn", "closed", capacity=1000),
    ShardInfo("eu-1", "eu", "dsn", "active", capacity=10),
]


def test_picks_lowest_fill_ratio_in_region() -> None:
    # us-1 is 50 % full, us-2 25 %: the bigger shard wins despite more tenants.
    assert choose_shard(SHARDS, {"us-1": 50, "us-2": 100}, "us").id == "us-2"
    assert choose_shard(SHARDS, {"us-1": 10, "us-2": 100}, "us").id == "us-1"


def test_ties_break_by_id_and_closed_shards_are_skipped() -> None:
    assert choose_shard(SHARDS, {}, "us").id == "us-1"
    assert choose_shard(SHARDS, {"us-1": 100, "us-2": 400}, "eu").id == "eu-1"


def test_full_or_unknown_region_is_an_error() -> None:
    with pytest.raises(PlacementError):
        choose_shard(SHARDS, {"eu-1": 10}, "eu")
    with pytest.raises(PlacementError):
        choose_shard(SHARDS, {}, "ap")
