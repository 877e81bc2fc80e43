"""Refresh tokens: rotation, reuse detection, atomic claims, expiry, revocation (RFC 7009)."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

import asyncpg
import httpx

from tests.fixtures.api import Tenant
from tests.fixtures.databases import TestDatabases, raw_dsn
from tests.oauth.conftest import bearer, make_user, refresh, set_user_active, sign_in
from tests.oauth.test_password_grant import assert_refused, claims_of


async def _rows(databases: TestDatabases, family_of: str) -> list[asyncpg.Record]:
    """Every token of the family the given refresh token belongs to."""
    digest = hashlib.sha256(family_of.encode()).hexdigest()
    conn = await asyncpg.connect(raw_dsn(databases.control))
    try:
        return list(
            await conn.fetch(
                "SELECT token_hash, used_at, revoked_at, expires_at, scope FROM refresh_token"
                " WHERE family_id = (SELECT family_id FROM refresh_token WHERE token_hash = $1)"
                " ORDER BY created_at",
                digest,
            )
        )
    finally:
        await conn.close()


async def test_refresh_rotates_the_token(
    login_client: httpx.AsyncClient, login_tenant: Tenant, databases: TestDatabases
) -> None:
    user = await make_user(login_client, login_tenant)
    first = await sign_in(login_client, user)
    resp = await refresh(login_client, login_tenant, first["refresh_token"])
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    second = resp.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert claims_of(second["access_token"])["sub"] == user.id
    assert "role" not in claims_of(second["access_token"])
    got = await login_client.get("/v1/accounts", headers=bearer(second["access_token"]))
    assert got.status_code == 200, got.text
    # Stored as SHA-256 only; the old one is marked used, the new one is live.
    rows = await _rows(databases, first["refresh_token"])
    assert [r["token_hash"] for r in rows] == [
        hashlib.sha256(t.encode()).hexdigest()
        for t in (first["refresh_token"], second["refresh_token"])
    ]
    assert rows[0]["used_at"] is not None
    assert rows[1]["used_at"] is None
    assert all(r["revoked_at"] is None for r in rows)
    # And the chain goes on.
    third = await refresh(login_client, login_tenant, second["refresh_token"])
    assert third.status_code == 200, third.text


async def test_refresh_can_narrow_but_not_widen_the_scope(
    login_client: httpx.AsyncClient, login_tenant: Tenant
) -> None:
    user = await make_user(login_client, login_tenant)
    from tests.oauth.conftest import password_login

    narrow = await password_login(
        login_client, login_tenant, user.email, user.password, scope="crm:read"
    )
    assert narrow.status_code == 200, narrow.text
    assert narrow.json()["scope"] == "crm:read"
    wider = await refresh(
        login_client, login_tenant, narrow.json()["refresh_token"], scope="crm:read crm:write"
    )
    assert_refused(wider, "invalid_scope")
    same = await refresh(login_client, login_tenant, narrow.json()["refresh_token"])
    assert same.status_code == 200, same.text
    assert same.json()["scope"] == "crm:read"


async def test_replayed_refresh_token_revokes_the_whole_family(
    login_client: httpx.AsyncClient, login_tenant: Tenant, databases: TestDatabases
) -> None:
    user = await make_user(login_client, login_tenant)
    first = await sign_in(login_client, user)
    second = (await refresh(login_client, login_tenant, first["refresh_token"])).json()
    third = (await refresh(login_client, login_tenant, second["refresh_token"])).json()
    other_session = await sign_in(login_client, user)

    # A thief replays the first token: refused, and the newest token dies with it.
    assert_refused(await refresh(login_client, login_tenant, first["refresh_token"]))
    assert_refused(await refresh(login_client, login_tenant, third["refresh_token"]))
    assert_refused(await refresh(login_client, login_tenant, second["refresh_token"]))
    rows = await _rows(databases, first["refresh_token"])
    assert len(rows) == 3
    assert all(r["revoked_at"] is not None for r in rows)
    # Another sign-in of the same user is another family: untouched.
    assert (
        await refresh(login_client, login_tenant, other_session["refresh_token"])
    ).status_code == 200


async def test_concurrent_double_use_has_exactly_one_winner(
    login_client: httpx.AsyncClient,
    login_settings: object,
    login_tenant: Tenant,
) -> None:
    from tests.oauth.conftest import api

    user = await make_user(login_client, login_tenant)
    for _ in range(3):
        session = await sign_in(login_client, user)
        # Two instances, so the two uses really run in parallel (separate threads and
        # connections), racing for the row.
        async with api(login_settings) as other:  # type: ignore[arg-type]
            answers = await asyncio.gather(
                refresh(login_client, login_tenant, session["refresh_token"]),
                refresh(other, login_tenant, session["refresh_token"]),
                refresh(login_client, login_tenant, session["refresh_token"]),
            )
        winners = [r for r in answers if r.status_code == 200]
        assert len(winners) == 1, [r.text for r in answers]
        for loser in (r for r in answers if r.status_code != 200):
            assert_refused(loser)
        # The losers saw a reuse, so the family (the winner's new token too) is revoked.
        assert_refused(
            await refresh(login_client, login_tenant, winners[0].json()["refresh_token"])
        )


async def test_refresh_token_of_another_client_is_refused(
    login_client: httpx.AsyncClient,
    login_tenant: Tenant,
    admin_headers: dict[str, str],
) -> None:
    user = await make_user(login_client, login_tenant)
    session = await sign_in(login_client, user)
    made = await login_client.post(
        f"/admin/v1/tenants/{login_tenant.id}/clients", json={"name": "b"}, headers=admin_headers
    )
    other = made.json()
    resp = await login_client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": session["refresh_token"]},
        auth=(other["client_id"], other["client_secret"]),
    )
    assert_refused(resp)
    # Not counted as a use: the rightful client still refreshes.
    assert (await refresh(login_client, login_tenant, session["refresh_token"])).status_code == 200


async def test_expired_unknown_and_garbage_refresh_tokens_are_refused(
    login_client: httpx.AsyncClient, login_tenant: Tenant, databases: TestDatabases
) -> None:
    user = await make_user(login_client, login_tenant)
    session = await sign_in(login_client, user)
    for token in ("", "x", "nope" * 20, str(uuid.uuid4())):
        resp = await refresh(login_client, login_tenant, token)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"] in ("invalid_grant", "invalid_request")
    conn = await asyncpg.connect(raw_dsn(databases.control))
    try:
        await conn.execute(
            "UPDATE refresh_token SET expires_at = now() - interval '1 second'"
            " WHERE token_hash = $1",
            hashlib.sha256(session["refresh_token"].encode()).hexdigest(),
        )
    finally:
        await conn.close()
    assert_refused(await refresh(login_client, login_tenant, session["refresh_token"]))


async def test_refresh_needs_an_active_user(
    login_client: httpx.AsyncClient, login_tenant: Tenant
) -> None:
    user = await make_user(login_client, login_tenant)
    session = await sign_in(login_client, user)
    await set_user_active(login_client, user, False)
    assert_refused(await refresh(login_client, login_tenant, session["refresh_token"]))
    # Refused without burning the token: reactivated, the user refreshes again.
    await set_user_active(login_client, user, True)
    assert (await refresh(login_client, login_tenant, session["refresh_token"])).status_code == 200


async def test_refresh_tokens_live_for_the_configured_time(
    login_client: httpx.AsyncClient, login_tenant: Tenant, databases: TestDatabases
) -> None:
    user = await make_user(login_client, login_tenant)
    session = await sign_in(login_client, user)
    (row,) = await _rows(databases, session["refresh_token"])
    days = (row["expires_at"].timestamp() - time.time()) / 86400
    assert abs(days - 30) < 0.01, days


# -- RFC 7009 revocation --------------------------------------------------------------


async def _revoke(
    client: httpx.AsyncClient, tenant: Tenant, token: str, **extra: str
) -> httpx.Response:
    return await client.post(
        "/oauth/revoke",
        data={"token": token, **extra},
        auth=(tenant.client_id, tenant.client_secret),
    )


async def test_revoking_a_refresh_token_ends_its_session(
    login_client: httpx.AsyncClient, login_tenant: Tenant, databases: TestDatabases
) -> None:
    user = await make_user(login_client, login_tenant)
    first = await sign_in(login_client, user)
    second = (await refresh(login_client, login_tenant, first["refresh_token"])).json()
    resp = await _revoke(
        login_client, login_tenant, second["refresh_token"], token_type_hint="refresh_token"
    )
    assert resp.status_code == 200, resp.text
    assert_refused(await refresh(login_client, login_tenant, second["refresh_token"]))
    rows = await _rows(databases, first["refresh_token"])
    assert all(r["revoked_at"] is not None for r in rows)
    # Revoking again, or with a wrong hint, is still 200 (RFC 7009 §2.2).
    assert (await _revoke(login_client, login_tenant, second["refresh_token"])).status_code == 200
    hinted = await _revoke(
        login_client, login_tenant, first["refresh_token"], token_type_hint="access_token"
    )
    assert hinted.status_code == 200


async def test_revoking_access_tokens_and_unknown_tokens_answers_200(
    login_client: httpx.AsyncClient, login_tenant: Tenant
) -> None:
    user = await make_user(login_client, login_tenant)
    session = await sign_in(login_client, user)
    for token in (session["access_token"], "not-a-token"):
        assert (await _revoke(login_client, login_tenant, token)).status_code == 200
    # The refresh token was not touched by revoking the access token.
    assert (await refresh(login_client, login_tenant, session["refresh_token"])).status_code == 200


async def test_revocation_needs_the_owning_client(
    login_client: httpx.AsyncClient,
    login_tenant: Tenant,
    admin_headers: dict[str, str],
) -> None:
    user = await make_user(login_client, login_tenant)
    session = await sign_in(login_client, user)
    no_auth = await login_client.post("/oauth/revoke", data={"token": session["refresh_token"]})
    assert no_auth.status_code in (400, 401), no_auth.text
    assert no_auth.json()["error"] == "invalid_client"
    wrong = await login_client.post(
        "/oauth/revoke",
        data={"token": session["refresh_token"]},
        auth=(login_tenant.client_id, "guess"),
    )
    assert wrong.status_code == 401, wrong.text
    made = await login_client.post(
        f"/admin/v1/tenants/{login_tenant.id}/clients", json={"name": "c"}, headers=admin_headers
    )
    other = made.json()
    stranger = await login_client.post(
        "/oauth/revoke",
        data={"token": session["refresh_token"]},
        auth=(other["client_id"], other["client_secret"]),
    )
    assert stranger.status_code == 400, stranger.text
    missing = await login_client.post(
        "/oauth/revoke",
        data={"token_type_hint": "refresh_token"},
        auth=(login_tenant.client_id, login_tenant.client_secret),
    )
    assert missing.status_code == 400, missing.text
    assert missing.json()["error"] == "invalid_request"
    bad_hint = await _revoke(login_client, login_tenant, "x", token_type_hint="id_token")
    assert bad_hint.status_code == 400
    assert bad_hint.json()["error"] == "unsupported_token_type"
    not_form = await login_client.post(
        "/oauth/revoke",
        json={"token": session["refresh_token"]},
        auth=(login_tenant.client_id, login_tenant.client_secret),
    )
    assert not_form.status_code == 400
    # None of that revoked anything.
    assert (await refresh(login_client, login_tenant, session["refresh_token"])).status_code == 200
