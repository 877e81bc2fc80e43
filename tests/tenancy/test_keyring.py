"""Tenant data keys in the control plane: wrapping, rotation, re-wrapping, shredding."""

from __future__ import annotations

import base64
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from meridian.settings import Settings
from tenancy.keyring import KeyUnavailable, LocalKeyProvider, TenantKeyring, kek_id_of
from tenancy.models import TenantKey
from tests.fixtures.api import Tenant
from tests.fixtures.databases import TEST_KEK


def provider(*ids: str, primary: str) -> LocalKeyProvider:
    """Test KEKs, and the suite's KEK (``local-1``) that wrapped onboarding's key."""
    keys = {i: bytes([n + 1]) * 32 for n, i in enumerate(ids)}
    return LocalKeyProvider({"local-1": base64.b64decode(TEST_KEK), **keys}, primary)


async def test_rotation_rewrap_and_crypto_shredding(settings: Settings, tenant: Tenant) -> None:
    engine = create_async_engine(settings.control_dsn)  # the app role, like the API
    tid = uuid.UUID(tenant.id)
    try:
        ring = TenantKeyring(engine, provider("k1", primary="k1"))
        async with engine.begin() as conn:
            # Onboarding made version 1; ensuring it again changes nothing.
            assert await ring.ensure_key(conn, tid) == 1
        v1 = await ring.active_cipher(tid)
        row = uuid.uuid4()
        blob = v1.encrypt("contact", "email", row, "ada@example.com")

        async with engine.begin() as conn:
            assert await ring.create_key(conn, tid) == 2
        assert [(k.version, k.state) for k in await ring.versions(tid)] == [
            (1, "decrypt_only"),
            (2, "active"),
        ]
        assert (await ring.active_cipher(tid)).version == 2
        old = await ring.cipher(tid, 1)  # old rows stay readable
        assert old.decrypt("contact", "email", row, blob) == "ada@example.com"

        # KEK rotation: a second process with k1 and k2 re-wraps everything under k2...
        rotated = TenantKeyring(engine, provider("k1", "k2", primary="k2"))
        # Scoped to this tenant: the suite's other tenants keep the suite's KEK.
        assert await rotated.rewrap_all(tid) == 2
        async with engine.connect() as conn:
            wrapped = (
                (
                    await conn.execute(
                        select(TenantKey.wrapped_key).where(TenantKey.tenant_id == tid)
                    )
                )
                .scalars()
                .all()
            )
        assert {kek_id_of(w) for w in wrapped} == {"k2"}
        # ...after which a process holding only k2 can still read old rows.
        only_k2 = TenantKeyring(engine, LocalKeyProvider({"k2": bytes([2]) * 32}, "k2"))
        assert (await only_k2.cipher(tid, 1)).decrypt("contact", "email", row, blob) == (
            "ada@example.com"
        )

        async with engine.begin() as conn:
            assert await only_k2.destroy_all(conn, tid) == 2
        for ring_ in (ring, rotated, only_k2):
            ring_.forget(tid)
            with pytest.raises(KeyUnavailable):
                await ring_.cipher(tid, 1)
            with pytest.raises(KeyUnavailable):
                await ring_.active_cipher(tid)
        async with engine.connect() as conn:
            material = (
                (
                    await conn.execute(
                        select(TenantKey.wrapped_key).where(TenantKey.tenant_id == tid)
                    )
                )
                .scalars()
                .all()
            )
        assert material == [None, None]
    finally:
        await engine.dispose()


async def test_a_wrapped_key_cannot_be_moved_to_another_tenant(
    settings: Settings, tenant: Tenant, other_tenant: Tenant
) -> None:
    engine = create_async_engine(settings.control_admin_dsn or settings.control_dsn)
    a, b = uuid.UUID(tenant.id), uuid.UUID(other_tenant.id)
    try:
        ring = TenantKeyring(engine, provider("k1", primary="k1"))
        async with engine.begin() as conn:
            await ring.ensure_key(conn, a)
            await ring.ensure_key(conn, b)
            wrapped_a = await conn.scalar(
                select(TenantKey.wrapped_key).where(TenantKey.tenant_id == a)
            )
            # An attacker with database access copies A's wrapped key over B's.
            await conn.execute(
                TenantKey.__table__.update()
                .where(TenantKey.tenant_id == b)
                .values(wrapped_key=wrapped_a)
            )
        assert (await ring.cipher(a, 1)).version == 1  # the KEK is loaded...
        with pytest.raises(KeyUnavailable):
            await ring.cipher(b, 1)  # ...but A's key does not authenticate as B's
    finally:
        await engine.dispose()
