"""``meridian.web.targets``: the calls' client connects only to addresses it checked."""

from __future__ import annotations

import aiohttp
import pytest

from meridian.web import targets
from tests.fixtures.receivers import receiver


async def test_the_resolver_refuses_a_name_with_a_private_address() -> None:
    resolver = targets.CheckedResolver(allow_private=False)
    try:
        with pytest.raises(targets.RefusedAddress, match="not a public address"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()


async def test_a_call_never_connects_to_a_name_that_resolves_to_a_private_address() -> None:
    # The name passes no check of its form here: the session alone must refuse it at
    # the connection, whatever the name resolved to when it was configured.
    async with receiver() as hook, targets.outbound_session(allow_private=False) as http:
        url = hook.url.replace("127.0.0.1", "localhost")
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await http.post(f"{url}/hook", data=b"{}", allow_redirects=False)
        assert targets.failure(caught.value).startswith("target refused: localhost resolves")
        assert hook.requests == []


async def test_private_targets_are_reached_where_the_platform_allows_them() -> None:
    async with receiver() as hook, targets.outbound_session(allow_private=True) as http:
        url = hook.url.replace("127.0.0.1", "localhost")
        async with http.post(f"{url}/hook", data=b"{}", allow_redirects=False) as response:
            assert response.status == 200
            # At most what is asked for is read.
            assert len(await targets.read_start(response, 1)) <= 1
        assert len(hook.requests) == 1
