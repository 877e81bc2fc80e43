"""A webhook's secret is sealed like any sensitive field: a rotation of the tenant's data
key re-encrypts it, the old key version is retired, and deliveries still carry a
signature the receiver's copy of the secret verifies."""

from __future__ import annotations

import uuid

import httpx
from standardwebhooks import Webhook as Verifier

from meridian.encryption.reencrypt import reencrypt, rotate_tenant_key
from meridian.runtime import Runtime
from meridian.settings import Settings
from tests.fixtures.api import Tenant
from tests.fixtures.databases import TestDatabases
from tests.fixtures.receivers import receiver
from tests.fixtures.shard_db import superuser
from tests.fixtures.waiting import eventually
from tests.fixtures.worker import running_worker
from tests.webhooks.conftest import contact, subscribe


async def test_a_key_rotation_re_encrypts_the_secret_and_deliveries_still_verify(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings, databases: TestDatabases
) -> None:
    rt: Runtime = app_client.app.state.runtime  # type: ignore[attr-defined]
    async with receiver() as rx:
        made = await subscribe(app_client, tenant, rx.url, "contact.created")
        ctx = await rt.directory.load(uuid.UUID(tenant.id))
        assert ctx is not None
        assert await rotate_tenant_key(rt, ctx.tenant_id, propagation=0) == 2
        result = await reencrypt(rt, ctx)
        assert result.rows.get("webhook") == 1
        assert result.retired == [1]
        async with superuser(databases, tenant.shard_id) as conn:
            version = await conn.fetchval(
                "SELECT enc_version FROM webhook WHERE tenant_id = $1 AND id = $2",
                uuid.UUID(tenant.id),
                uuid.UUID(made["id"]),
            )
        assert version == 2
        # A worker started now knows only the live key version.
        async with running_worker(settings):
            await contact(app_client, tenant)
            await eventually(lambda: rx.requests, what="a delivery")
    got = rx.requests[0]
    assert Verifier(made["secret"]).verify(got.body, got.headers)["type"] == "contact.created"
