"""First-party sign-in with the password grant (behind MERIDIAN_PASSWORD_GRANT)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import pytest

from meridian.users import passwords
from tests.fixtures.api import Tenant
from tests.oauth.conftest import (
    PASSWORD,
    bearer,
    make_user,
    password_login,
    set_user_active,
    sign_in,
)

BAD_LOGIN = "The email or password is wrong, or the user may not sign in."


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def header_of(token: str) -> dict[str, Any]:
    part = token.split(".")[0]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def assert_refused(resp: httpx.Response, error: str = "invalid_grant") -> None:
    assert resp.status_code in (400, 401), resp.text
    body = resp.json()
    assert body["error"] == error, body
    assert "access_token" not in body
    assert "refresh_token" not in body
    assert resp.headers["cache-control"] == "no-store"


async def test_sign_in_issues_a_user_token_and_a_refresh_token(
    login_client: httpx.AsyncClient, login_tenant: Tenant
) -> None:
    user = await make_user(login_client, login_tenant, email="  Ada.Lovelace@Example.COM ")
    # The email is matched trimmed and case-insensitively.
    asked = int(time.time())
    resp = await password_login(login_client, login_tenant, "ada.lovelace@example.com", PASSWORD)
    answered = time.time()
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert body["token_type"].lower() == "bearer"
    assert body["expires_in"] == 900
    assert body["scope"] == "crm:read crm:write"
    assert isinstance(body["refresh_token"], str)
    assert len(body["refresh_token"]) >= 43
    claims = claims_of(body["access_token"])
    assert claims["sub"] == user.id  # the user, not the client
    assert claims["client_id"] == login_tenant.client_id
    assert claims["tenant_id"] == login_tenant.id
    assert "role" not in claims  # read from the user record on every request
    assert asked <= claims["iat"] <= answered  # issued while we asked (whole seconds)
    assert header_of(body["access_token"])["kid"]
    resp = await login_client.get("/v1/accounts", headers=bearer(body["access_token"]))
    assert resp.status_code == 200, resp.text


async def test_client_tokens_carry_the_clients_role(
    login_client: httpx.AsyncClient, login_tenant: Tenant, admin_headers: dict[str, str]
) -> None:
    claims = claims_of(login_tenant.token)
    assert claims["sub"] == claims["client_id"] == login_tenant.client_id
    assert claims["role"] == "admin"  # a tenant's first client administers it
    made = await login_client.post(
        f"/admin/v1/tenants/{login_tenant.id}/clients",
        json={"name": "integration"},
        headers=admin_headers,
    )
    assert made.status_code == 201, made.text
    cred = made.json()
    resp = await login_client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(cred["client_id"], cred["client_secret"]),
    )
    assert resp.status_code == 200, resp.text
    assert "refresh_token" not in resp.json()  # client credentials: no refresh token
    assert claims_of(resp.json()["access_token"])["role"] == "integration"


async def test_wrong_password_unknown_user_and_no_password_look_alike(
    login_client: httpx.AsyncClient, login_tenant: Tenant
) -> None:
    user = await make_user(login_client, login_tenant)
    invited = await make_user(login_client, login_tenant, password=None)
    answers = [
        await password_login(login_client, login_tenant, user.email, "wrong password"),
        await password_login(login_client, login_tenant, "nobody@example.com", PASSWORD),
        await password_login(login_client, login_tenant, invited.email, ""),
        await password_login(login_client, login_tenant, invited.email, PASSWORD),
        await password_login(login_client, login_tenant, user.email, PASSWORD + " "),
    ]
    for resp in answers:
        assert_refused(resp)
        assert resp.json()["error_description"] == BAD_LOGIN
    # And the right password still works.
    await sign_in(login_client, user)


async def test_unknown_user_costs_a_hash_like_a_known_one(
    login_client: httpx.AsyncClient, login_tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No account enumeration by timing: every refused sign-in verifies exactly one
    argon2id hash with today's parameters, whether the user exists, has a password or
    not. Counted here rather than timed (a loaded machine makes timings meaningless);
    `python -m loadtests.token_bench` measures the password grant."""
    user = await make_user(login_client, login_tenant)
    invited = await make_user(login_client, login_tenant, password=None)
    verified: list[str] = []
    real = passwords.verify_password

    def counting(password: str, encoded: str) -> bool:
        verified.append(encoded)
        return real(password, encoded)  # the real, full-cost verification still runs

    monkeypatch.setattr(passwords, "verify_password", counting)
    for email in (user.email, "ghost@example.com", invited.email):
        verified.clear()
        assert_refused(await password_login(login_client, login_tenant, email, "nope"))
        assert len(verified) == 1, email
        (encoded,) = verified
        assert encoded.startswith("$argon2id$"), email
        assert not passwords.needs_rehash(encoded), email  # today's cost parameters


async def test_inactive_user_is_refused(
    login_client: httpx.AsyncClient, login_tenant: Tenant
) -> None:
    user = await make_user(login_client, login_tenant, active=False)
    resp = await password_login(login_client, login_tenant, user.email, PASSWORD)
    assert_refused(resp)
    assert resp.json()["error_description"] == BAD_LOGIN
    await set_user_active(login_client, user, True)
    await sign_in(login_client, user)


async def test_a_client_signs_in_users_of_its_own_tenant_only(
    login_client: httpx.AsyncClient,
    login_tenant: Tenant,
    admin_headers: dict[str, str],
) -> None:
    from tests.fixtures.api import onboard

    other = await onboard(login_client, admin_headers, region="eu", slug=login_tenant.slug + "-o")
    victim = await make_user(login_client, other)
    # The other tenant's slug with our client, and our slug with a user of theirs.
    resp = await password_login(login_client, login_tenant, victim.email, PASSWORD, slug=other.slug)
    assert_refused(resp)
    resp = await password_login(login_client, login_tenant, victim.email, PASSWORD)
    assert_refused(resp)
    assert resp.json()["error_description"] == BAD_LOGIN
    # The victim's own tenant client works, so the refusals were about the tenant.
    await sign_in(login_client, victim)


async def test_missing_parameters_and_bad_client_are_refused(
    login_client: httpx.AsyncClient, login_tenant: Tenant
) -> None:
    user = await make_user(login_client, login_tenant)
    base = {"grant_type": "password", "username": user.email, "password": PASSWORD}
    auth = (login_tenant.client_id, login_tenant.client_secret)
    for missing in ("username", "password"):
        form = {**{k: v for k, v in base.items() if k != missing}, "tenant": login_tenant.slug}
        assert_refused(
            await login_client.post("/oauth/token", data=form, auth=auth), "invalid_request"
        )
    assert_refused(await login_client.post("/oauth/token", data=base, auth=auth), "invalid_request")
    # Without the client's secret nothing about the user is looked at.
    resp = await password_login(
        login_client, login_tenant, user.email, PASSWORD, auth=(login_tenant.client_id, "guess")
    )
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_client"
    # No client at all: the password grant needs client authentication.
    resp = await login_client.post(
        "/oauth/token",
        data={**base, "tenant": login_tenant.slug, "client_id": login_tenant.client_id},
    )
    assert resp.status_code in (400, 401), resp.text
    assert resp.json()["error"] == "invalid_client"


async def test_platform_admin_client_cannot_use_the_password_grant(
    login_client: httpx.AsyncClient,
    login_tenant: Tenant,
    settings: Any,
) -> None:
    from meridian.operations import create_admin_client

    admin = await create_admin_client(settings, "no users")
    user = await make_user(login_client, login_tenant)
    resp = await password_login(
        login_client,
        login_tenant,
        user.email,
        PASSWORD,
        auth=(admin.client_id, admin.client_secret),
    )
    assert_refused(resp, "unauthorized_client")


async def test_suspended_tenant_cannot_sign_in(
    login_client: httpx.AsyncClient,
    login_tenant: Tenant,
    admin_headers: dict[str, str],
) -> None:
    user = await make_user(login_client, login_tenant)
    session = await sign_in(login_client, user)
    suspended = await login_client.post(
        f"/admin/v1/tenants/{login_tenant.id}/suspend", headers=admin_headers
    )
    assert suspended.status_code == 200, suspended.text
    try:
        assert_refused(
            await password_login(login_client, login_tenant, user.email, PASSWORD),
            "unauthorized_client",
        )
        from tests.oauth.conftest import refresh

        assert_refused(
            await refresh(login_client, login_tenant, session["refresh_token"]),
            "unauthorized_client",
        )
        resp = await login_client.get("/v1/accounts", headers=bearer(session["access_token"]))
        assert resp.status_code == 403, resp.text
        assert resp.json()["type"] == "urn:meridian:problem:tenant-suspended"
    finally:
        await login_client.post(
            f"/admin/v1/tenants/{login_tenant.id}/resume", headers=admin_headers
        )
    # Nothing was burnt while suspended: the refresh token still works.
    from tests.oauth.conftest import refresh

    assert (await refresh(login_client, login_tenant, session["refresh_token"])).status_code == 200


async def test_password_grant_is_off_by_default(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    user = await make_user(app_client, tenant)
    resp = await password_login(app_client, tenant, user.email, PASSWORD)
    assert_refused(resp, "unsupported_grant_type")
    meta = (await app_client.get("/.well-known/oauth-authorization-server")).json()
    assert "password" not in meta["grant_types_supported"]


async def test_metadata_names_grants_and_revocation(
    login_client: httpx.AsyncClient, login_settings: Any
) -> None:
    meta = (await login_client.get("/.well-known/oauth-authorization-server")).json()
    issuer = login_settings.issuer.rstrip("/")
    assert set(meta["grant_types_supported"]) == {
        "client_credentials",
        "password",
        "refresh_token",
    }
    assert meta["revocation_endpoint"] == issuer + "/oauth/revoke"
    assert set(meta["revocation_endpoint_auth_methods_supported"]) == {
        "client_secret_basic",
        "client_secret_post",
    }
    assert "code_challenge_methods_supported" not in meta
    assert "authorization_endpoint" not in meta
