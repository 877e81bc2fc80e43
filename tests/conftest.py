"""Shared fixtures: real PostgreSQL (control + two shards) and real Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from meridian.app import create_app
from meridian.operations import create_admin_client, migrate_all
from meridian.settings import Settings
from tests.fixtures.api import AdminToken, Tenant, onboard
from tests.fixtures.databases import (
    REDIS_SERVER_URL,
    TestDatabases,
    drop_databases,
    ensure_app_role,
    names_for,
    recreate_database,
)
from tests.fixtures.redis_db import claim_database

# Authlib refuses plain-http issuers other than loopback; tests use http://127.0.0.1.

# Hypothesis: no per-example deadline (a loaded 2-core CI machine makes any wall-clock
# limit a coin toss, and the examples here talk to PostgreSQL), no "too slow" health
# check for the same reason, and derandomized: every run tries the same examples, so a
# property test cannot pass on one run and fail on the next. `--hypothesis-profile
# explore` searches with fresh random examples instead and prints the reproduction
# (seed / @reproduce_failure blob) of any failure.
_NO_TIMING = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
hypothesis_settings.register_profile(
    "meridian", derandomize=True, database=None, print_blob=True, **_NO_TIMING
)
hypothesis_settings.register_profile("explore", print_blob=True, **_NO_TIMING)
hypothesis_settings.load_profile("meridian")


@pytest.fixture(scope="session")
def worker_id_str() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "gw0")


@pytest.fixture(scope="session")
def redis_url(worker_id_str: str) -> Iterator[str]:
    """This worker's own database on the test Redis (see tests/fixtures/redis_db.py)."""
    claimed = claim_database(REDIS_SERVER_URL, owner=f"pid{os.getpid()}-{worker_id_str}")
    claimed.keep()
    yield claimed.url
    claimed.release()


@pytest.fixture(scope="session")
async def databases(worker_id_str: str, redis_url: str) -> AsyncIterator[TestDatabases]:
    dbs = names_for(worker_id_str, redis_url)
    await ensure_app_role()
    for name in [dbs.control, *(db for _, db in dbs.shards.values())]:
        await recreate_database(name)
    await migrate_all(dbs.settings())
    yield dbs
    # Every database of this worker, including those tests derived from these names.
    # MERIDIAN_TEST_KEEP_DATABASES=1 keeps them for a look after a failure.
    if not os.environ.get("MERIDIAN_TEST_KEEP_DATABASES"):
        await drop_databases(dbs.prefix)


@pytest.fixture(scope="session")
def settings(databases: TestDatabases) -> Settings:
    return databases.settings()


@pytest.fixture(scope="session")
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture(scope="session")
async def admin_token(app_client: httpx.AsyncClient, settings: Settings) -> AdminToken:
    """The suite's platform admin; fixtures wider than a test ask it for headers."""
    admin = await create_admin_client(settings, "test admin")
    return AdminToken(app_client, admin.client_id, admin.client_secret)


@pytest.fixture
async def admin_headers(admin_token: AdminToken) -> dict[str, str]:
    """Bearer headers of the platform admin, renewed before the token expires."""
    return await admin_token.headers()


@pytest.fixture
async def tenant(app_client: httpx.AsyncClient, admin_headers: dict[str, str]) -> Tenant:
    return await onboard(app_client, admin_headers, region="us", slug=f"a-{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def other_tenant(app_client: httpx.AsyncClient, admin_headers: dict[str, str]) -> Tenant:
    return await onboard(app_client, admin_headers, region="eu", slug=f"b-{uuid.uuid4().hex[:12]}")
