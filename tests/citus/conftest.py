"""Fixtures of the tests that run Meridian on a Citus shard."""

from __future__ import annotations

from tests.fixtures.citus import citus_cluster, pg_clusters

__all__ = ["citus_cluster", "pg_clusters"]
