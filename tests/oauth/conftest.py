"""Fixtures of the OAuth tests: an API with the password grant on, users, sign-in."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from meridian.settings import Settings
from tests.fixtures.api import Tenant, instance, onboard

PASSWORD = "correct horse battery staple"


# An API instance of its own (its own runtime, L1 caches and key store).
api = instance


@pytest.fixture(scope="session")
def login_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"password_grant": True})


@pytest.fixture(scope="package")
async def login_client(login_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An API instance with the password grant on (the session's default has it off).
    Closed after this package: its connection pools must not outlive the OAuth tests."""
    async with api(login_settings) as client:
        yield client


@pytest.fixture
async def login_tenant(login_client: httpx.AsyncClient, admin_headers: dict[str, str]) -> Tenant:
    return await onboard(
        login_client, admin_headers, region="us", slug=f"l-{uuid.uuid4().hex[:12]}"
    )


@dataclass
class User:
    id: str
    email: str
    password: str
    tenant: Tenant


async def make_user(
    client: httpx.AsyncClient,
    tenant: Tenant,
    *,
    email: str | None = None,
    password: str | None = PASSWORD,
    role: str = "admin",
    active: bool = True,
) -> User:
    """A user of ``tenant``, created through the users API by the tenant's admin client."""
    email = email or f"u-{uuid.uuid4().hex[:10]}@example.com"
    body: dict[str, Any] = {"email": email, "name": "Test User", "role": role}
    if password is not None:
        body["password"] = password
    resp = await client.post("/v1/users", json=body, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    user = User(resp.json()["id"], email, password or "", tenant)
    if not active:
        await set_user_active(client, user, False)
    return user


async def set_user_active(client: httpx.AsyncClient, user: User, active: bool) -> None:
    resp = await client.patch(
        f"/v1/users/{user.id}", json={"active": active}, headers=user.tenant.headers
    )
    assert resp.status_code == 200, resp.text


async def password_login(
    client: httpx.AsyncClient,
    tenant: Tenant,
    username: str,
    password: str,
    *,
    slug: str | None = None,
    auth: tuple[str, str] | None = None,
    **extra: str,
) -> httpx.Response:
    form = {
        "grant_type": "password",
        "username": username,
        "password": password,
        "tenant": slug if slug is not None else tenant.slug,
        **extra,
    }
    return await client.post(
        "/oauth/token", data=form, auth=auth or (tenant.client_id, tenant.client_secret)
    )


async def refresh(
    client: httpx.AsyncClient, tenant: Tenant, token: str, **extra: str
) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": token, **extra}
    return await client.post(
        "/oauth/token", data=form, auth=(tenant.client_id, tenant.client_secret)
    )


async def sign_in(client: httpx.AsyncClient, user: User) -> dict[str, Any]:
    resp = await password_login(client, user.tenant, user.email, user.password)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
