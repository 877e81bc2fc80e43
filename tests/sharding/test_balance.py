"""Rebalancing plans (``sharding.balance.plan_rebalance``): pure, no database."""

from __future__ import annotations

import uuid

from sharding.balance import PlannedMove, plan_rebalance


def tenants(*sizes: int) -> dict[uuid.UUID, int]:
    return {uuid.UUID(int=i + 1): n for i, n in enumerate(sizes)}


def loads_after(loads: dict[str, dict[uuid.UUID, int]], plan: list[PlannedMove]) -> dict[str, int]:
    totals = {shard: sum(held.values()) for shard, held in loads.items()}
    for move in plan:
        totals[move.source_shard_id] -= move.rows
        totals[move.target_shard_id] += move.rows
    return totals


def test_moves_go_from_the_fullest_shard_to_the_emptiest_until_even() -> None:
    loads = {"s1": tenants(500, 300, 200, 100, 50), "s2": {uuid.UUID(int=100): 100}, "s3": {}}
    plan = plan_rebalance(loads, tolerance=0.1)
    # 1150 / 100 / 0: the tenant nearest half the gap goes to the emptiest, twice; then
    # the fullest shard (s3) holds only a tenant bigger than the gap that is left.
    assert plan == [
        PlannedMove(uuid.UUID(int=1), "s1", "s3", 500),
        PlannedMove(uuid.UUID(int=2), "s1", "s2", 300),
    ]
    assert loads_after(loads, plan) == {"s1": 350, "s2": 400, "s3": 500}


def test_an_even_region_plans_nothing() -> None:
    loads = {"s1": tenants(100, 100), "s2": {uuid.UUID(int=9): 210}}
    assert plan_rebalance(loads, tolerance=0.1) == []


def test_a_tenant_bigger_than_the_gap_is_not_moved() -> None:
    """Moving it would only make the other shard the fuller one: it wants a dedicated
    shard, which a rebalance does not decide."""
    loads = {"s1": tenants(1000), "s2": {uuid.UUID(int=7): 10}}
    assert plan_rebalance(loads) == []


def test_one_shard_plans_nothing_and_max_moves_is_kept() -> None:
    assert plan_rebalance({"s1": tenants(5, 5, 5)}) == []
    loads = {"s1": tenants(*([10] * 50)), "s2": {}}
    assert len(plan_rebalance(loads, max_moves=3)) == 3


def test_the_plan_is_the_same_for_the_same_input() -> None:
    loads = {"a": tenants(40, 30, 30, 20, 20, 10), "b": {}, "c": {uuid.UUID(int=99): 5}}
    assert plan_rebalance(loads) == plan_rebalance(dict(reversed(list(loads.items()))))
