"""The role the Citus administrative commands run as on the test cluster: BYPASSRLS and
a member of the tables' owner, so Citus's copies see every row (an owner bound by
forced RLS would copy none), made on every node because Citus runs the copies on the
workers as the same role."""

from __future__ import annotations

import asyncio

from tests.fixtures.citus import CitusCluster

SHARD_ADMIN = "meridian_shard_admin"


def _ensure(cluster: CitusCluster) -> None:
    for node in cluster.nodes:
        node.ensure_role(SHARD_ADMIN, login=True, bypass_rls=True)
        node.sql(f"GRANT {cluster.owner} TO {SHARD_ADMIN}")


async def shard_admin_dsn(cluster: CitusCluster, database: str | None = None) -> str:
    """A SQLAlchemy URL of ``database`` (default: the cluster's) on the coordinator as
    the shard admin role, created first if missing (idempotent)."""
    await asyncio.to_thread(_ensure, cluster)
    return cluster.coordinator.dsn(database or cluster.database, SHARD_ADMIN)
