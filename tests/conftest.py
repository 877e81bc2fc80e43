"""Shared fixtures: real PostgreSQL (control + two shards) and real Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from meridian.operations import create_admin_client, migrate_all
from meridian.settings import Settings
from tests.fixtures.api import AdminToken, Tenant, instance, intruder, onboard
from tests.fixtures.citus import citus_cluster, engines_citus_cluster
from tests.fixtures.citus_api import citus_api
from tests.fixtures.databases import (
    REDIS_SERVER_URL,
    TestDatabases,
    drop_databases,
    ensure_app_role,
    names_for,
    recreate_database,
)
from tests.fixtures.engines import citus_platform, postgres_platform
from tests.fixtures.pgcluster import pg_clusters
from tests.fixtures.redis_db import claim_database
from tests.fixtures.users import user_api

# Fixtures many modules use, registered here once. A module (or conftest) that imports a
# fixture gets a definition of its own, so a session-scoped one would be built once per
# importing module and kept to the end of the session: an API instance with its pools
# each, or a Citus cluster each. Ask for these by name; never import them.
__all__ = [
    "citus_api",
    "citus_cluster",
    "citus_platform",
    "engines_citus_cluster",
    "intruder",
    "pg_clusters",
    "postgres_platform",
    "user_api",
]

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

# Where CI and developers' machines have a build of Citus (tests/fixtures/citus.py
# installs it from there). With it present the Citus tests must run: a skipped one fails
# the run (see pytest_sessionfinish), whatever skipped it.
CITUS_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "citus"
_citus_skips: list[str] = []


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, reason)
        return str(longrepr[2])
    return str(longrepr or "")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Notes every skipped Citus test (under xdist the controller sees every report)."""
    if not report.skipped:
        return
    reason = _skip_reason(report)
    if "citus" in report.nodeid.lower() or "citus" in reason.lower():
        _citus_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller decides
        return
    if _citus_skips and CITUS_FOLDER.is_dir() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _citus_skips and CITUS_FOLDER.is_dir():
        terminalreporter.section("Citus tests skipped", sep="=", red=True, bold=True)
        terminalreporter.line(
            f"{CITUS_FOLDER} is present, so the Citus tests must run; "
            f"{len(_citus_skips)} skipped, which fails the run:"
        )
        for line in _citus_skips[:20]:
            terminalreporter.line(f"  {line}")


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


# The plain platform (control plane and shards on the test server) under names of its
# own: modules whose API tests run on both shard engines (tests/fixtures/engines.py)
# replace `settings`, `app_client`, `admin_token`, `tenant` and `other_tenant`, and
# reach the plain ones through these.
@pytest.fixture(scope="session")
def plain_settings(databases: TestDatabases) -> Settings:
    return databases.settings()


@pytest.fixture(scope="session")
async def plain_app_client(plain_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with instance(plain_settings) as client:
        yield client


@pytest.fixture(scope="session")
async def plain_admin_token(
    plain_app_client: httpx.AsyncClient, plain_settings: Settings
) -> AdminToken:
    admin = await create_admin_client(plain_settings, "test admin")
    return AdminToken(plain_app_client, admin.client_id, admin.client_secret)


@pytest.fixture(scope="session")
def settings(plain_settings: Settings) -> Settings:
    return plain_settings


@pytest.fixture(scope="session")
def app_client(plain_app_client: httpx.AsyncClient) -> httpx.AsyncClient:
    return plain_app_client


@pytest.fixture(scope="session")
def admin_token(plain_admin_token: AdminToken) -> AdminToken:
    """The suite's platform admin; fixtures wider than a test ask it for headers."""
    return plain_admin_token


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
