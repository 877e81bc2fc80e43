"""A key rotation and the tenant's stored files: an export (its file's chunks and its
sealed filter) made under the old data-key version keeps that version alive through a
re-encryption, stays readable, and the version is destroyed once the file is gone."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import httpx

from meridian.encryption.reencrypt import reencrypt, retire_unused, rotate_tenant_key
from meridian.worker.main import RunningWorker
from tests.encryption.conftest import new_contact, runtime_of
from tests.fixtures.api import Tenant
from tests.fixtures.shard_db import superuser
from tests.transfers.helpers import csv_rows, exported

if TYPE_CHECKING:
    from tests.fixtures.databases import TestDatabases


async def test_a_version_stored_files_use_outlives_the_rotation_until_they_are_gone(
    app_client: httpx.AsyncClient,
    tenant: Tenant,
    worker: RunningWorker,
    databases: TestDatabases,
) -> None:
    rt = runtime_of(app_client)
    ctx = await rt.directory.load(uuid.UUID(tenant.id))
    assert ctx is not None
    await new_contact(app_client, tenant, email="kept@x.example", last_name="Kept")
    done, before = await exported(
        app_client, tenant.headers, object="contacts", format="csv", filter="last_name[eq]:Kept"
    )
    await rotate_tenant_key(rt, ctx.tenant_id, propagation=0)
    result = await reencrypt(rt, ctx)
    assert result.rows == {"contact": 1}
    assert result.retired == []  # the export's file and filter still use version 1
    # Still readable: the file, and the export's filter.
    again = await app_client.get(done["download_url"])
    assert again.status_code == 200, again.text
    assert again.content == before
    assert [r["email"] for r in csv_rows(again.content)] == ["kept@x.example"]
    shown = await app_client.get(f"/v1/exports/{done['id']}", headers=tenant.headers)
    assert shown.json()["filter"] == "last_name[eq]:Kept", shown.text
    # Gone (as when the export expires): nothing holds version 1 any more.
    async with superuser(databases, tenant.shard_id) as conn:
        await conn.execute("DELETE FROM data_export WHERE tenant_id = $1", ctx.tenant_id)
        await conn.execute("DELETE FROM data_file WHERE tenant_id = $1", ctx.tenant_id)
    assert await retire_unused(rt, ctx) == [1]
