"""Fixtures of the tests that run Meridian on a Citus shard: the session's Citus
cluster registered as shard ``citus-1`` next to the plain shard ``us-1``, in a control
plane of its own, and an API instance over them (``tests/fixtures/citus_api.py``).

The app role's statements on the cluster fail when they would run on more than one
shard (``citus.multi_task_query_log_level = error``): every tenant statement the API
issues must be routed to one worker.
"""

from __future__ import annotations

from tests.fixtures.citus_api import CITUS_REGION, CITUS_SHARD, CitusApi

# citus_api and citus_cluster are registered once, in tests/conftest.py.
__all__ = ["CITUS_REGION", "CITUS_SHARD", "CitusApi"]
