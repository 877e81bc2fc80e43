"""The suite's platform-admin token renews itself (tests/fixtures/api.py AdminToken): a
run longer than a token's 15 minutes must not turn every onboarding into a 401."""

from __future__ import annotations

import httpx

from tests.fixtures.api import AdminToken


async def test_the_admin_token_is_reused_then_renewed_in_place(
    app_client: httpx.AsyncClient, admin_token: AdminToken
) -> None:
    held = await admin_token.headers()
    assert await admin_token.headers() is held
    first = held["Authorization"]
    assert (await admin_token.headers())["Authorization"] == first  # still fresh: reused

    admin_token.expire_now()  # as if half its lifetime had passed
    renewed = await admin_token.headers()
    # A new token, in the same dict: whoever holds the headers now sends the new one.
    assert renewed is held
    assert renewed["Authorization"] != first
    resp = await app_client.get("/admin/v1/shards", headers=held)
    assert resp.status_code == 200, resp.text
