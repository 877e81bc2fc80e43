"""Fixtures of the fulfilment tests: an API instance that accepts step URLs on 127.0.0.1
(where the tests' receivers listen) and signs users in."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from meridian.app import create_app
from meridian.settings import Settings


@pytest.fixture(scope="session")
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings.model_copy(update={"password_grant": True, "webhook_allow_private_targets": True})
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture(scope="session")
async def strict_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An API instance with the platform's default: private targets refused."""
    app = create_app(settings.model_copy(update={"webhook_allow_private_targets": False}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield client
