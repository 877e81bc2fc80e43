"""Equality search on encrypted fields by blind index, and duplicate detection."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import httpx

from tests.encryption.conftest import new_contact, search
from tests.fixtures.api import Tenant
from tests.fixtures.shard_db import superuser

if TYPE_CHECKING:
    from tests.fixtures.databases import TestDatabases


async def test_search_by_email_phone_and_tax_id_with_variants(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    ada = await new_contact(
        app_client,
        tenant,
        email="Ada.Lovelace@Example.com",
        phone="+44 (20) 7946-0958",
        tax_id="GB 123.456.789",
    )
    other = await new_contact(app_client, tenant, email="charles@example.com", phone="020 7946")
    for variant in (
        "ada.lovelace@example.com",
        "  ADA.LOVELACE@EXAMPLE.COM ",
        "Ada.Lovelace@Example.com",
    ):
        assert await search(app_client, tenant, email=variant) == [ada["id"]]
    for variant in ("+44 20 7946 0958", "+442079460958", "0044 20 7946 0958", "+44-20-7946-0958"):
        assert await search(app_client, tenant, phone=variant) == [ada["id"]]
    assert await search(app_client, tenant, tax_id="123456789") == [ada["id"]]
    assert await search(app_client, tenant, email="ada@example.com") == []
    assert await search(app_client, tenant, phone="020 7946") == [other["id"]]
    # Filters combine with the others, and pagination keeps the search.
    assert await search(app_client, tenant, email="charles@example.com", last_name="Nobody") == []


async def test_search_on_accounts_by_tax_id(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    made = await app_client.post(
        "/v1/accounts", json={"name": "Acme", "tax_id": "DE 811 907 980"}, headers=tenant.headers
    )
    assert made.status_code == 201, made.text
    found = await search(app_client, tenant, "/v1/accounts", tax_id="DE811907980")
    assert found == [made.json()["id"]]


async def test_another_tenants_identical_email_is_not_linked(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant, databases: TestDatabases
) -> None:
    mine = await new_contact(app_client, tenant, email="shared@example.com")
    theirs = await new_contact(app_client, other_tenant, email="shared@example.com")
    assert await search(app_client, tenant, email="shared@example.com") == [mine["id"]]
    assert await search(app_client, other_tenant, email="shared@example.com") == [theirs["id"]]
    # Per-tenant keys: the same address has unrelated blind indexes in the two tenants.
    indexes = []
    for t, c in ((tenant, mine), (other_tenant, theirs)):
        async with superuser(databases, t.shard_id) as conn:
            indexes.append(
                await conn.fetchval(
                    "SELECT email_bidx FROM contact WHERE id = $1", uuid.UUID(c["id"])
                )
            )
    assert indexes[0] != indexes[1]


async def test_search_uses_the_blind_index(
    app_client: httpx.AsyncClient, tenant: Tenant, databases: TestDatabases
) -> None:
    async with superuser(databases, tenant.shard_id) as conn:
        # A tenant of some size (rows straight into the table: only the plan matters).
        await conn.execute(
            "INSERT INTO contact (tenant_id, id, last_name, email_enc, email_bidx, enc_version) "
            "SELECT $1, gen_random_uuid(), 'x', '\\x01'::bytea, "
            "decode(md5(i::text), 'hex'), 1 FROM generate_series(1, 5000) i",
            uuid.UUID(tenant.id),
        )
        await conn.execute("ANALYZE contact")
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT TEXT) SELECT id FROM contact WHERE tenant_id = $1 "
            "AND email_bidx = ANY($2::bytea[])",
            uuid.UUID(tenant.id),
            [b"x" * 16],
        )
    assert "ix_contact_email_bidx" in plan


async def test_duplicate_email_is_refused_unless_allowed(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    first = await new_contact(app_client, tenant, email="dup@example.com")
    again = await app_client.post(
        "/v1/contacts",
        json={"last_name": "Again", "email": " DUP@example.com"},
        headers=tenant.headers,
    )
    assert again.status_code == 409, again.text
    problem = again.json()
    assert problem["type"] == "urn:meridian:problem:duplicate"
    assert problem["duplicate_of"] == first["id"]
    allowed = await new_contact(
        app_client, tenant, email="dup@example.com", params={"allow_duplicate": "true"}
    )
    assert sorted(await search(app_client, tenant, email="dup@example.com")) == sorted(
        [first["id"], allowed["id"]]
    )
    # Another tenant's contact is never a duplicate.
    await new_contact(app_client, other_tenant, email="dup@example.com")
    # Contacts without an email are never duplicates of each other.
    await new_contact(app_client, tenant, last_name="NoMail")
    await new_contact(app_client, tenant, last_name="NoMail")
