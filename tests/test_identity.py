"""The actor of a user token: read in one statement or in a read transaction, as the
shard's read strategy says, with the same answer either way."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from meridian.errors import Unauthorized
from meridian.identity import Actor, forget_actor
from meridian.runtime import Runtime
from tests.fixtures.api import Tenant
from tests.fixtures.users import access_for, new_user


async def test_actor_is_the_same_with_either_read_strategy(
    app_client: httpx.AsyncClient,
    tenant: Tenant,
    other_tenant: Tenant,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime: Runtime = app_client.app.state.runtime  # type: ignore[attr-defined]
    router = runtime.router
    user = await new_user(app_client, tenant, role="sales_manager")
    user_id = uuid.UUID(user["id"])
    one_statement_reads = 0
    read_one = router.read_one

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal one_statement_reads
        one_statement_reads += 1
        return await read_one(*args, **kwargs)

    monkeypatch.setattr(router, "read_one", counted)
    for one_statement in (True, False):
        monkeypatch.setattr(router, "one_statement_reads", one_statement)
        before = one_statement_reads
        await forget_actor(await access_for(app_client, tenant, None), user_id)
        access = await access_for(app_client, tenant, user_id)
        assert access.actor == Actor(user_id, "sales_manager")
        assert one_statement_reads - before == (1 if one_statement else 0)
        # The user is nobody in another tenant.
        await forget_actor(await access_for(app_client, other_tenant, None), user_id)
        with pytest.raises(Unauthorized):
            await access_for(app_client, other_tenant, user_id)
