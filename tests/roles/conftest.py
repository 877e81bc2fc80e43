"""Roles tests with users: an API instance with the first-party password grant on."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from meridian.settings import Settings
from tests.fixtures.api import Tenant, onboard
from tests.oauth.conftest import api


@pytest.fixture(scope="session")
async def users_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api(settings.model_copy(update={"password_grant": True})) as client:
        yield client


@pytest.fixture
async def users_tenant(users_client: httpx.AsyncClient, admin_headers: dict[str, str]) -> Tenant:
    return await onboard(users_client, admin_headers, slug=f"r-{uuid.uuid4().hex[:12]}")
