"""Authorization tests: the real policy store on the test control plane."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from uuid import UUID

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from authz.store import PolicyStore
from meridian.settings import Settings
from tenancy.models import Tenant
from tests.fixtures.databases import TestDatabases


@pytest.fixture(scope="session")
async def control(databases: TestDatabases) -> AsyncIterator[AsyncEngine]:
    # The app role: what the API itself may do on the control plane.
    engine = create_async_engine(databases.settings().control_dsn)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def store(control: AsyncEngine, settings: Settings) -> PolicyStore:
    policies = PolicyStore(control)
    await policies.sync_templates()
    return policies


NewTenant = Callable[[], Awaitable[UUID]]


@pytest.fixture
def new_tenant(control: AsyncEngine) -> NewTenant:
    """A bare tenant row: enough for the policy tables' foreign keys."""

    async def make() -> UUID:
        tenant_id = uuid.uuid4()
        async with control.begin() as conn:
            await conn.execute(
                insert(Tenant).values(
                    id=tenant_id,
                    slug=f"authz-{tenant_id.hex[:12]}",
                    name="authz test",
                    region="us",
                    status="active",
                )
            )
        return tenant_id

    return make
