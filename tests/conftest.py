"""Shared fixtures: real PostgreSQL (control + two shards) and real Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from meridian.app import create_app
from meridian.bootstrap import create_admin_client, migrate_all
from meridian.settings import Settings
from tests.fixtures.api import Tenant, onboard, token_for
from tests.fixtures.databases import (
    TestDatabases,
    ensure_app_role,
    names_for,
    recreate_database,
)

# Authlib refuses plain-http issuers other than loopback; tests use http://127.0.0.1.


@pytest.fixture(scope="session")
def worker_id_str() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "gw0")


@pytest.fixture(scope="session")
async def databases(worker_id_str: str) -> TestDatabases:
    dbs = names_for(worker_id_str)
    await ensure_app_role()
    for name in [dbs.control, *(db for _, db in dbs.shards.values())]:
        await recreate_database(name)
    await migrate_all(dbs.settings())
    return dbs


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
async def admin_headers(app_client: httpx.AsyncClient, settings: Settings) -> dict[str, str]:
    admin = await create_admin_client(settings, "test admin")
    token = await token_for(app_client, admin.client_id, admin.client_secret)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def tenant(app_client: httpx.AsyncClient, admin_headers: dict[str, str]) -> Tenant:
    return await onboard(app_client, admin_headers, region="us", slug=f"a-{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def other_tenant(app_client: httpx.AsyncClient, admin_headers: dict[str, str]) -> Tenant:
    return await onboard(app_client, admin_headers, region="eu", slug=f"b-{uuid.uuid4().hex[:12]}")
