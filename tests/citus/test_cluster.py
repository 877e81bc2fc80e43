"""The Citus test cluster itself: a coordinator and two active workers, Citus loaded."""

from __future__ import annotations

import asyncpg
import pytest

from tests.fixtures.citus import CitusCluster

pytestmark = pytest.mark.slow


async def test_a_coordinator_and_two_active_workers(citus_cluster: CitusCluster) -> None:
    conn = await asyncpg.connect(citus_cluster.url())
    try:
        version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'citus'")
        nodes = await conn.fetch(
            "SELECT nodeport, groupid, isactive, shouldhaveshards FROM pg_dist_node"
            " ORDER BY groupid"
        )
        wal_level = await conn.fetchval("SHOW wal_level")
    finally:
        await conn.close()
    assert version is not None
    assert wal_level == "logical"
    ports = [node.port for node in citus_cluster.nodes]
    assert [r["nodeport"] for r in nodes] == ports
    assert [r["groupid"] for r in nodes] == [0, 1, 2]  # group 0: the coordinator
    assert all(r["isactive"] for r in nodes)
    # Tenant tables' shards live on the workers only.
    assert [r["shouldhaveshards"] for r in nodes] == [False, True, True]
