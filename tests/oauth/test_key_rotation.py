"""Signing-key rotation across two API instances, on a control plane of its own (so
rotating does not change the keys the rest of the suite signs with).

Publication and retirement times are moved in the database rather than waited for, so
no step depends on how fast the machine is."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from typer.testing import CliRunner

from meridian.cli import app as cli
from meridian.migrate import upgrade
from meridian.oauth.keys import KeyRotationError, KeyStore, list_keys, retired_window, rotate
from meridian.operations import create_admin_client
from meridian.settings import Settings, get_settings
from tests.fixtures.api import token_for
from tests.fixtures.databases import APP_ROLE, TestDatabases, dsn, recreate_database
from tests.fixtures.waiting import eventually
from tests.oauth.conftest import api, bearer
from tests.oauth.test_password_grant import header_of

TTL = 60
REFRESH = 0.2  # instances reload keys every 0.2 s here (30 s by default)
PUBLISH = 1  # a next key may sign 1 s after publication here (the JWKS max-age)


@pytest.fixture(scope="module")
async def keys_settings(databases: TestDatabases) -> Settings:
    # Named after the worker's control plane: the session's clean-up drops it.
    name = databases.control + "_keys"
    await recreate_database(name)
    await upgrade("control", dsn(name), app_role=APP_ROLE)
    return databases.settings(
        control_dsn=dsn(name, APP_ROLE),
        control_admin_dsn=dsn(name),
        shards=[],
        access_token_ttl=TTL,
        jwks_max_age=PUBLISH,
        key_refresh_interval=REFRESH,
    )


@pytest.fixture
async def control(keys_settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(keys_settings.control_migrate_dsn)
    yield engine
    await engine.dispose()


WINDOW = retired_window(TTL, REFRESH)


async def kids(client: httpx.AsyncClient) -> set[str]:
    resp = await client.get("/.well-known/jwks.json")
    assert resp.status_code == 200
    assert resp.headers["cache-control"] == f"public, max-age={PUBLISH}"
    return {k["kid"] for k in resp.json()["keys"]}


async def works(client: httpx.AsyncClient, token: str) -> bool:
    resp = await client.get("/admin/v1/shards", headers=bearer(token))
    assert resp.status_code in (200, 401), resp.text
    return resp.status_code == 200


async def test_rotation_publishes_first_signs_later_and_retires_after_the_window(
    keys_settings: Settings, control: AsyncEngine
) -> None:
    admin = await create_admin_client(keys_settings, "rotation")
    async with api(keys_settings) as a, api(keys_settings) as b:

        async def mint(inst: httpx.AsyncClient) -> str:
            return await token_for(inst, admin.client_id, admin.client_secret)

        old_token = await mint(a)
        old_kid = header_of(old_token)["kid"]
        assert await kids(a) == await kids(b) == {old_kid}

        # Step 1: the next key is published everywhere but signs nothing.
        published = await rotate(control, activation_delay=PUBLISH, window=WINDOW)
        assert published.action == "published"
        new_kid = published.kid
        for inst in (a, b):
            await eventually(lambda inst=inst: _has(inst, new_kid), what="the next key published")
            assert header_of(await mint(inst))["kid"] == old_kid
        # Too early to promote: a verifier may not have fetched the JWKS yet. (Asked with
        # an hour's delay: with the configured second, a slow run may be past it already.)
        with pytest.raises(KeyRotationError, match="Activate it after"):
            await rotate(control, activation_delay=3600, window=WINDOW, activate_only=True)
        unseen_old = await mint(b)  # signed by the old key, never shown to a verifier yet

        # Step 2: after the publication delay the next key signs and the old one retires.
        await _age_publication(control, new_kid, timedelta(seconds=PUBLISH))
        activated = await rotate(control, activation_delay=PUBLISH, window=WINDOW)
        assert (activated.action, activated.kid, activated.retired) == (
            "activated",
            new_kid,
            old_kid,
        )
        for inst in (a, b):
            await eventually(
                lambda inst=inst: _signs_with(inst, mint, new_kid), what="the new key signing"
            )
            # Old tokens stay valid while their key is published.
            assert await kids(inst) == {old_kid, new_kid}
            assert await works(inst, old_token)
            assert await works(inst, await mint(inst))
        listed = {
            k.kid: k for k in await list_keys(control, activation_delay=PUBLISH, window=WINDOW)
        }
        assert listed[old_kid].state == "retired"
        assert listed[old_kid].published
        assert listed[new_kid].state == "active"

        # After the window (access-token TTL + refresh period + leeway), the retired key
        # leaves the JWKS and its tokens are refused. The window is moved, not waited for.
        await _age_retirement(control, old_kid, WINDOW + timedelta(seconds=1))
        for inst in (a, b):
            await eventually(lambda inst=inst: _lacks(inst, old_kid), what="the old key gone")
            assert not await works(inst, unseen_old)
            assert await works(inst, await mint(inst))
        listed = {
            k.kid: k for k in await list_keys(control, activation_delay=PUBLISH, window=WINDOW)
        }
        assert not listed[old_kid].published

        # The next rotation publishes a new next key and deletes the expired one.
        again = await rotate(control, activation_delay=PUBLISH, window=WINDOW)
        assert again.action == "published"
        remaining = {
            k.kid for k in await list_keys(control, activation_delay=PUBLISH, window=WINDOW)
        }
        assert remaining == {new_kid, again.kid}


async def _has(inst: httpx.AsyncClient, kid: str) -> bool:
    return kid in await kids(inst)


async def _lacks(inst: httpx.AsyncClient, kid: str) -> bool:
    return kid not in await kids(inst)


async def _signs_with(inst: httpx.AsyncClient, mint: object, kid: str) -> bool:
    token = await mint(inst)  # type: ignore[operator]
    return bool(header_of(token)["kid"] == kid)


async def _age_publication(control: AsyncEngine, kid: str, by: timedelta) -> None:
    """As if the next key ``kid`` had been published ``by`` earlier."""
    async with control.begin() as conn:
        await conn.execute(
            text(
                "UPDATE signing_key SET created_at = created_at - CAST(:by AS interval)"
                " WHERE kid = :kid AND state = 'next'"
            ),
            {"by": by, "kid": kid},
        )


async def _without_next_key(control: AsyncEngine) -> None:
    """An active key and no next one: a pending next key is promoted (as if its
    publication delay had passed)."""
    keys = await list_keys(control, activation_delay=PUBLISH, window=WINDOW)
    for key in keys:
        if key.state == "next":
            await _age_publication(control, key.kid, timedelta(seconds=PUBLISH))
            await rotate(control, activation_delay=PUBLISH, window=WINDOW, activate_only=True)
    await KeyStore(control, token_ttl=TTL).ensure_active_key()
    states = [k.state for k in await list_keys(control, activation_delay=PUBLISH, window=WINDOW)]
    assert "next" not in states
    assert states.count("active") == 1


async def _age_retirement(control: AsyncEngine, kid: str, by: timedelta) -> None:
    async with control.begin() as conn:
        await conn.execute(
            text(
                "UPDATE signing_key SET retired_at = retired_at - CAST(:by AS interval)"
                " WHERE kid = :kid"
            ),
            {"by": by, "kid": kid},
        )


async def test_activate_without_a_next_key_is_refused(control: AsyncEngine) -> None:
    await _without_next_key(control)
    with pytest.raises(KeyRotationError, match="no next key"):
        await rotate(control, activation_delay=PUBLISH, window=WINDOW, activate_only=True)


@pytest.fixture
async def settled_keys(control: AsyncEngine) -> None:
    await _without_next_key(control)


@pytest.mark.usefixtures("settled_keys")
def test_keys_cli(keys_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MERIDIAN_CONTROL_DSN", keys_settings.control_dsn)
    monkeypatch.setenv("MERIDIAN_CONTROL_ADMIN_DSN", keys_settings.control_migrate_dsn)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        listed = runner.invoke(cli, ["keys", "list"])
        assert listed.exit_code == 0, listed.output
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert {r["state"] for r in rows} <= {"next", "active", "retired"}
        assert sum(r["state"] == "active" for r in rows) == 1
        # No next key yet: the first rotate publishes one; with the default 300 s
        # publication delay, it may not sign yet.
        first = runner.invoke(cli, ["keys", "rotate"])
        assert first.exit_code == 0, first.output
        assert json.loads(first.stdout)["action"] == "published"
        refused = runner.invoke(cli, ["keys", "rotate", "--activate"])
        assert refused.exit_code == 1
        assert "Activate it after" in refused.stderr
    finally:
        get_settings.cache_clear()
