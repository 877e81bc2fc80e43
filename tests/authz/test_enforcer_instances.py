"""Policy changes across API instances (two apps on one Redis), the watcher's own
reconnects, and authorization with Redis gone."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from authz.enforcer import EnforcerRegistry
from authz.store import PolicyStore
from authz.watcher import PolicyWatcher
from meridian.settings import Settings
from tests.fixtures.api import instance as api
from tests.fixtures.api import onboard
from tests.fixtures.redis_servers import RedisServer, free_port
from tests.fixtures.waiting import eventually
from tests.roles.helpers import permissions, role_headers


def runtime(client: httpx.AsyncClient) -> Any:
    return client.app.state.runtime  # type: ignore[attr-defined]


async def turns(client: httpx.AsyncClient, path: str, headers: dict[str, str], status: int) -> None:
    """Waits until ``path`` answers ``status``, the only other answer allowed being the
    one it turns from (the announcement's pub/sub hop takes a moment)."""
    before = {200: 403, 403: 200}[status]

    async def answered() -> bool:
        code = (await client.get(path, headers=headers)).status_code
        assert code in {before, status}, code
        return code == status

    await eventually(answered, what=f"{path} answering {status}")


async def test_a_policy_change_on_one_instance_is_enforced_on_another(
    settings: Settings, admin_headers: dict[str, str], app_client: httpx.AsyncClient
) -> None:
    tenant = await onboard(app_client, admin_headers, slug=f"pol-{uuid.uuid4().hex[:8]}")
    async with api(settings) as a, api(settings) as b:
        for inst in (a, b):
            await eventually(runtime(inst).policy_watcher.subscribed.is_set, what="the watcher")
        reader = await role_headers(a, tenant, "read_only")
        # B has the tenant's enforcer loaded and its decision memoised.
        for _ in range(3):
            assert (await b.get("/v1/contacts", headers=reader)).status_code == 200
        loads = runtime(b).authz.stats.loads

        put = await a.put(
            "/v1/roles/read_only/permissions",
            json={"permissions": permissions(("accounts", "read"))},
            headers=tenant.headers,
        )
        assert put.status_code == 200, put.text
        assert (await a.get("/v1/contacts", headers=reader)).status_code == 403  # at once here
        await turns(b, "/v1/contacts", reader, 403)
        # B dropped its enforcer on the announcement and loaded the new policy. (At least
        # once: another test run on the same Redis may announce changed templates, which
        # makes every instance reload; pub/sub channels ignore the database index.)
        assert runtime(b).authz.stats.loads >= loads + 1
        for _ in range(5):  # and never back to the old decision
            assert (await b.get("/v1/contacts", headers=reader)).status_code == 403

        # The other way round: a change made on B reaches A.
        reset = await b.delete("/v1/roles/read_only/permissions", headers=tenant.headers)
        assert reset.status_code == 200, reset.text
        assert (await b.get("/v1/contacts", headers=reader)).status_code == 200
        await turns(a, "/v1/contacts", reader, 200)


async def test_authorization_works_and_local_changes_apply_with_redis_down(
    settings: Settings, admin_headers: dict[str, str], app_client: httpx.AsyncClient
) -> None:
    tenant = await onboard(app_client, admin_headers, slug=f"nored-{uuid.uuid4().hex[:8]}")
    # Nothing listens on this port: Redis is down from the start.
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async with api(down) as client:
        assert not runtime(client).policy_watcher.subscribed.is_set()
        reader = await role_headers(client, tenant, "read_only")
        assert (await client.get("/v1/contacts", headers=reader)).status_code == 200
        put = await client.put(
            "/v1/roles/read_only/permissions",
            json={"permissions": permissions(("accounts", "read"))},
            headers=tenant.headers,
        )
        assert put.status_code == 200, put.text
        assert (await client.get("/v1/contacts", headers=reader)).status_code == 403
        assert (await client.get("/v1/accounts", headers=reader)).status_code == 200
        reset = await client.delete("/v1/roles/read_only/permissions", headers=tenant.headers)
        assert reset.status_code == 200
        assert (await client.get("/v1/contacts", headers=reader)).status_code == 200


@pytest.mark.slow
async def test_watcher_reconnects_and_forgets_what_it_may_have_missed(
    tmp_path: Path, store: PolicyStore
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    registry = EnforcerRegistry(store)
    client = Redis.from_url(server.url, socket_timeout=1.0, socket_connect_timeout=1.0)
    watcher = PolicyWatcher(client, registry)
    tenant = uuid.uuid4()
    try:
        await watcher.start()
        await eventually(watcher.subscribed.is_set, what="the watcher subscribing")
        assert registry.live  # announcements arrive: enforcers are held past their TTL
        await registry.get(tenant)
        assert registry.cached(tenant) is not None

        server.stop()
        await eventually(
            lambda: not watcher.subscribed.is_set(), what="the watcher noticing Redis is gone"
        )
        assert not registry.live  # back to the TTL and its version checks
        # Decisions keep coming from the loaded enforcer while Redis is away.
        policy = registry.cached(tenant)
        assert policy is not None
        assert policy.allows("admin", "roles", "update")

        server.start()
        await eventually(watcher.subscribed.is_set, what="the watcher subscribing again")
        # Announcements published while it was away are lost: it forgot every enforcer.
        assert registry.cached(tenant) is None
        await registry.get(tenant)
        announcer = PolicyWatcher(client, EnforcerRegistry(store))
        assert await announcer.publish(tenant, 7)
        await eventually(
            lambda: registry.cached(tenant) is None, what="the announcement being applied"
        )
    finally:
        await watcher.close()
        await client.aclose()
        server.stop()


async def test_watchers_on_one_redis_carry_announcements(
    settings: Settings, store: PolicyStore
) -> None:
    assert settings.redis_url
    # A channel of its own: other suites may share this Redis (pub/sub ignores the db).
    channel = f"test:policy:{uuid.uuid4().hex}"
    clients = [Redis.from_url(settings.redis_url) for _ in range(2)]
    registries = [EnforcerRegistry(store) for _ in range(2)]
    watchers = [
        PolicyWatcher(c, r, channel=channel) for c, r in zip(clients, registries, strict=True)
    ]
    try:
        for w in watchers:
            await w.start()
            await eventually(w.subscribed.is_set, what="a watcher subscribing")
        receiver = registries[1]
        one, two = uuid.uuid4(), uuid.uuid4()
        await receiver.get(one)
        await receiver.get(two)

        async def gone(tenant: uuid.UUID) -> None:
            await eventually(
                lambda: receiver.cached(tenant) is None, what="the announcement being applied"
            )

        await clients[0].publish(channel, b"not json")  # ignored, the watcher carries on
        assert await watchers[0].publish(one, 1)
        await gone(one)
        assert receiver.cached(two) is not None  # other tenants are untouched
        assert watchers[1].subscribed.is_set()
        # Changed templates (a deploy) concern every tenant.
        assert await watchers[0].publish_templates_changed()
        await gone(two)
    finally:
        for w in watchers:
            await w.close()
        for c in clients:
            await c.aclose()
