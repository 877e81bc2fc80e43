"""Emergency revocation: a per-user and per-tenant not-before time, checked on every
request through the cache: at once on the revoking instance, and on a second API
instance as soon as the invalidation arrives over pub/sub."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from meridian.settings import Settings
from tests.fixtures.api import Tenant, onboard, token_for
from tests.fixtures.problems import assert_problem
from tests.fixtures.waiting import eventually
from tests.oauth.conftest import api, bearer, make_user, refresh, sign_in
from tests.oauth.test_password_grant import assert_refused


@pytest.fixture
async def pair(
    login_settings: Settings,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two API instances (separate L1 caches and verifiers) on one Redis."""
    async with api(login_settings) as a, api(login_settings) as b:
        for inst in (a, b):
            cache = inst.app.state.runtime.cache  # type: ignore[attr-defined]
            await eventually(cache.subscribed.is_set, what="the invalidation subscriber")
        yield a, b


async def status(client: httpx.AsyncClient, token: str) -> int:
    return (await client.get("/v1/accounts", headers=bearer(token))).status_code


async def refused_eventually(client: httpx.AsyncClient, token: str) -> None:
    """Accepted until the revocation reaches ``client``'s instance, then refused."""

    async def refused() -> bool:
        code = await status(client, token)
        assert code in {200, 401}, code
        return code == 401

    await eventually(refused, what="the token being refused")


async def test_revoking_a_user_voids_their_tokens_everywhere(
    pair: tuple[httpx.AsyncClient, httpx.AsyncClient],
    admin_headers: dict[str, str],
) -> None:
    a, b = pair
    tenant = await onboard(a, admin_headers, slug=f"r-{uuid.uuid4().hex[:10]}")
    target, bystander = await make_user(a, tenant), await make_user(a, tenant)
    old = await sign_in(a, target)
    other = await sign_in(b, bystander)
    # Both instances have verified (and cached) every token before the revocation.
    for inst in (a, b):
        for token in (old["access_token"], other["access_token"], tenant.token):
            assert await status(inst, token) == 200

    resp = await a.post(f"/v1/users/{target.id}/revoke-tokens", headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["subject"] == target.id
    assert body["tenant_id"] == tenant.id
    assert body["refresh_tokens_revoked"] == 1

    assert await status(a, old["access_token"]) == 401  # at once on the revoking instance
    await refused_eventually(b, old["access_token"])
    for inst in (a, b):  # the bystander and the tenant's client are untouched
        assert await status(inst, other["access_token"]) == 200
        assert await status(inst, tenant.token) == 200
    assert_refused(await refresh(a, tenant, old["refresh_token"]))
    assert (await refresh(b, tenant, other["refresh_token"])).status_code == 200

    # Signing in again works at once, on both instances.
    fresh = await sign_in(b, target)
    for inst in (a, b):
        assert await status(inst, fresh["access_token"]) == 200


async def test_revoking_a_tenant_voids_every_token_of_it(
    pair: tuple[httpx.AsyncClient, httpx.AsyncClient],
    admin_headers: dict[str, str],
) -> None:
    a, b = pair
    tenant = await onboard(a, admin_headers, slug=f"rt-{uuid.uuid4().hex[:10]}")
    bystander = await onboard(a, admin_headers, slug=f"rb-{uuid.uuid4().hex[:10]}")
    user = await make_user(a, tenant)
    session = await sign_in(a, user)
    for inst in (a, b):
        for token in (session["access_token"], tenant.token, bystander.token):
            assert await status(inst, token) == 200

    resp = await b.post(f"/admin/v1/tenants/{tenant.id}/revoke-tokens", headers=admin_headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["subject"] == "*"
    assert resp.json()["refresh_tokens_revoked"] == 1

    for token in (session["access_token"], tenant.token):
        assert await status(b, token) == 401  # at once on the revoking instance
        await refused_eventually(a, token)
    assert_refused(await refresh(a, tenant, session["refresh_token"]))
    for inst in (a, b):  # another tenant is untouched
        assert await status(inst, bystander.token) == 200
    # New tokens work at once: the client's, and a user's.
    fresh = await token_for(a, tenant.client_id, tenant.client_secret)
    again = await sign_in(b, user)
    for inst in (a, b):
        assert await status(inst, fresh) == 200
        assert await status(inst, again["access_token"]) == 200


async def test_revoke_endpoints_check_who_and_what(
    login_client: httpx.AsyncClient,
    login_tenant: Tenant,
    admin_headers: dict[str, str],
) -> None:
    # Another tenant's user is tests/test_cross_tenant.py's; no user at all: 404.
    resp = await login_client.post(
        f"/v1/users/{uuid.uuid4()}/revoke-tokens", headers=login_tenant.headers
    )
    assert_problem(resp, 404, "not-found")
    # A tenant token cannot use the platform endpoint; unknown tenants are 404.
    other = await onboard(login_client, admin_headers, region="eu", slug=login_tenant.slug + "-x")
    resp = await login_client.post(
        f"/admin/v1/tenants/{other.id}/revoke-tokens", headers=login_tenant.headers
    )
    assert_problem(resp, 403, "insufficient-scope")
    resp = await login_client.post(
        f"/admin/v1/tenants/{uuid.uuid4()}/revoke-tokens", headers=admin_headers
    )
    assert_problem(resp, 404, "not-found")
    # A read-only user may not revoke a colleague's sessions.
    reader = await make_user(login_client, login_tenant, role="read_only")
    colleague = await make_user(login_client, login_tenant)
    colleague_session = await sign_in(login_client, colleague)
    reader_session = await sign_in(login_client, reader)
    resp = await login_client.post(
        f"/v1/users/{colleague.id}/revoke-tokens", headers=bearer(reader_session["access_token"])
    )
    assert_problem(resp, 403, "forbidden")
    assert await status(login_client, colleague_session["access_token"]) == 200
    assert await status(login_client, other.token) == 200


async def test_suspending_a_tenant_locks_it_out_on_every_instance(
    pair: tuple[httpx.AsyncClient, httpx.AsyncClient],
    admin_headers: dict[str, str],
) -> None:
    """Directory entries stay in L1 until invalidated (minutes, not seconds): only the
    invalidation published by the suspending instance can lock the tenant out elsewhere."""
    a, b = pair
    tenant = await onboard(a, admin_headers, slug=f"rs-{uuid.uuid4().hex[:10]}")
    for inst in (a, b):
        assert await status(inst, tenant.token) == 200  # its directory entry is in L1
    runtime = b.app.state.runtime  # type: ignore[attr-defined]
    assert runtime.cache.live
    assert runtime.settings.tenant_state_hold > 60  # no TTL would end the wait below

    resp = await a.post(f"/admin/v1/tenants/{tenant.id}/suspend", headers=admin_headers)
    assert resp.status_code == 200, resp.text

    async def locked_out() -> bool:
        code = await status(b, tenant.token)
        assert code in {200, 403}, code
        return code == 403

    await eventually(locked_out, what="the suspension reaching the other instance")
    resumed = await b.post(f"/admin/v1/tenants/{tenant.id}/resume", headers=admin_headers)
    assert resumed.status_code == 200, resumed.text

    async def back() -> bool:
        return await status(a, tenant.token) == 200

    await eventually(back, what="the resumption reaching the first instance")
