"""Fixtures of the tests that run Meridian on a Citus shard: the session's Citus
cluster registered as shard ``citus-1`` (engine ``citus``, migrated by its non-superuser
owner) next to the plain shard ``us-1``, in a control plane of their own, and an API
instance over them (with the password grant on, for user tokens).

The app role's statements on the cluster fail when they would run on more than one
shard (``citus.multi_task_query_log_level = error``): every tenant statement the API
issues must be routed to one worker.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg
import httpx
import pytest

from meridian.app import create_app
from meridian.operations import add_shard, create_admin_client, migrate_all
from meridian.settings import Settings, ShardConfig
from tests.fixtures.api import AdminToken, Tenant, onboard
from tests.fixtures.citus import CitusCluster, citus_cluster, pg_clusters
from tests.fixtures.databases import APP_ROLE, dsn, raw_dsn, recreate_database

if TYPE_CHECKING:  # a plain import would make pytest try to collect it as a test class
    from tests.fixtures.databases import TestDatabases

__all__ = ["citus_cluster", "pg_clusters"]

CITUS_SHARD = "citus-1"
CITUS_REGION = "ci"  # a region of its own, so placement never picks it by accident


@dataclass
class CitusApi:
    client: httpx.AsyncClient
    admin: AdminToken
    settings: Settings
    cluster: CitusCluster

    async def onboard(self) -> Tenant:
        """A new tenant on the Citus shard."""
        admin = await self.admin.headers()
        tenant = await onboard(
            self.client, admin, shard_id=CITUS_SHARD, slug=f"citus-{uuid.uuid4().hex[:12]}"
        )
        assert tenant.shard_id == CITUS_SHARD
        return tenant


async def _cluster_sql(cluster: CitusCluster, statement: str) -> None:
    await asyncio.to_thread(cluster.coordinator.sql, statement, cluster.database)


@pytest.fixture(scope="session")
async def citus_api(
    databases: TestDatabases, citus_cluster: CitusCluster
) -> AsyncIterator[CitusApi]:
    # Named after the worker's databases, so the session's clean-up drops it if this
    # fixture's own clean-up does not run.
    control_db = f"{databases.prefix}_citus_control"
    region, local_db = databases.shards["us-1"]
    await recreate_database(control_db)
    settings = databases.settings(
        control_dsn=dsn(control_db, APP_ROLE),
        control_admin_dsn=dsn(control_db),
        shards=[
            ShardConfig(
                id="us-1", region=region, dsn=dsn(local_db, APP_ROLE), admin_dsn=dsn(local_db)
            )
        ],
        password_grant=True,
    )
    await migrate_all(settings)
    await _cluster_sql(
        citus_cluster,
        f"ALTER ROLE {APP_ROLE} IN DATABASE {citus_cluster.database} "
        "SET citus.multi_task_query_log_level = 'error'",
    )
    # The way an operator adds a Citus shard: `meridian shards add --engine citus`, as
    # the database's owner (no superuser, no CREATEROLE).
    await add_shard(
        settings,
        shard_id=CITUS_SHARD,
        region=CITUS_REGION,
        dsn=citus_cluster.dsn(APP_ROLE),
        admin_dsn=citus_cluster.dsn(citus_cluster.owner),
        capacity=100,
        engine="citus",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            client.app = app  # type: ignore[attr-defined]
            admin = await create_admin_client(settings, "citus admin")
            token = AdminToken(client, admin.client_id, admin.client_secret)
            yield CitusApi(client, token, settings, citus_cluster)
    conn = await asyncpg.connect(raw_dsn("postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{control_db}" WITH (FORCE)')
    finally:
        await conn.close()
