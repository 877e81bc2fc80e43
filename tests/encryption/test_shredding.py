"""Crypto-shredding: deleting a tenant destroys its keys first; its rows stay on the
shard but nobody can decrypt them, and its tokens are refused."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from meridian.encryption.fields import FieldUnreadable, open_rows
from meridian.settings import Settings
from tenancy.keyring import KeyUnavailable, TenantKeyring
from tenancy.models import TenantKey
from tests.encryption.conftest import new_contact, runtime_of
from tests.fixtures.api import Tenant
from tests.fixtures.shard_db import superuser

if TYPE_CHECKING:
    from tests.fixtures.databases import TestDatabases


async def test_deleting_a_tenant_shreds_its_data(
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tenant: Tenant,
    other_tenant: Tenant,
    settings: Settings,
    databases: TestDatabases,
) -> None:
    contact = await new_contact(app_client, tenant, email="gone@example.com")
    kept = await new_contact(app_client, other_tenant, email="kept@example.com")
    deleted = await app_client.delete(f"/admin/v1/tenants/{tenant.id}", headers=admin_headers)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["status"] == "deleted"
    again = await app_client.delete(f"/admin/v1/tenants/{tenant.id}", headers=admin_headers)
    assert again.status_code == 200  # idempotent

    tid = uuid.UUID(tenant.id)
    engine = create_async_engine(settings.control_dsn)
    try:
        async with engine.connect() as conn:
            keys = (
                await conn.execute(
                    select(TenantKey.state, TenantKey.wrapped_key).where(TenantKey.tenant_id == tid)
                )
            ).all()
        assert keys
        assert all(k.state == "destroyed" and k.wrapped_key is None for k in keys)
        # A fresh process with the KEK cannot unwrap any key of the tenant...
        fresh = TenantKeyring(engine, settings.key_provider())
        for key in await fresh.versions(tid):
            with pytest.raises(KeyUnavailable):
                await fresh.cipher(tid, key.version)
        with pytest.raises(KeyUnavailable):
            await fresh.active_cipher(tid)
        # ...so its rows, still on the shard, cannot be read by anyone.
        async with superuser(databases, tenant.shard_id) as conn:
            rows = await conn.fetch(
                "SELECT id, email_enc, phone_enc, tax_id_enc FROM contact WHERE tenant_id = $1",
                tid,
            )
        assert [r["id"] for r in rows] == [uuid.UUID(contact["id"])]
        with pytest.raises(FieldUnreadable):
            await open_rows(fresh, tid, "contact", [dict(r) for r in rows], reveal=True)
        with pytest.raises(FieldUnreadable):
            await open_rows(
                runtime_of(app_client).keyring, tid, "contact", [dict(r) for r in rows], reveal=True
            )
    finally:
        await engine.dispose()

    # The API treats the tenant as gone: its token is refused, and no new one is issued.
    got = await app_client.get(f"/v1/contacts/{contact['id']}", headers=tenant.headers)
    assert got.status_code == 401
    token = await app_client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(tenant.client_id, tenant.client_secret),
    )
    assert token.status_code == 400
    # Other tenants are untouched.
    other = await app_client.get(f"/v1/contacts/{kept['id']}", headers=other_tenant.headers)
    assert other.json()["email"] == "kept@example.com"


async def test_deleting_an_unknown_tenant_is_404(
    app_client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    got = await app_client.delete(f"/admin/v1/tenants/{uuid.uuid4()}", headers=admin_headers)
    assert got.status_code == 404
