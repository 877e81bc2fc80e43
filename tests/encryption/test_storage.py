"""What reaches the shard database, the idempotency records and the caches: ciphertext
and blind indexes only, never a sensitive field in clear."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import httpx
from redis.asyncio import Redis

from meridian.settings import Settings
from tests.encryption.conftest import new_contact, runtime_of
from tests.fixtures.api import Tenant
from tests.fixtures.shard_db import superuser

if TYPE_CHECKING:
    from tests.fixtures.databases import TestDatabases

EMAIL = "grace.hopper@navy.example"
PHONE = "+1 202 555 0147"
TAX_ID = "US-98-7654321"
# The plaintext in every form it could leak in: as sent, normalised, digits only.
NEEDLES = [EMAIL, "grace.hopper", "+12025550147", "2025550147", "555 0147", TAX_ID, "987654321"]


def _leaks(text: str) -> list[str]:
    return [n for n in NEEDLES if n.lower() in text.lower()]


async def test_shard_rows_hold_no_plaintext(
    app_client: httpx.AsyncClient, tenant: Tenant, databases: TestDatabases
) -> None:
    account = await app_client.post(
        "/v1/accounts", json={"name": "Navy", "tax_id": TAX_ID}, headers=tenant.headers
    )
    assert account.status_code == 201, account.text
    assert account.json()["tax_id"] == TAX_ID
    contact = await new_contact(
        app_client,
        tenant,
        email=EMAIL,
        phone=PHONE,
        tax_id=TAX_ID,
        account_id=account.json()["id"],
    )
    assert (contact["email"], contact["phone"], contact["tax_id"]) == (EMAIL, PHONE, TAX_ID)
    # Through every read path, so that whatever they cache is covered below.
    for path in (f"/v1/contacts/{contact['id']}", "/v1/contacts", "/v1/accounts"):
        assert (await app_client.get(path, headers=tenant.headers)).status_code == 200
    changed = await app_client.patch(
        f"/v1/contacts/{contact['id']}", json={"title": "Rear Admiral"}, headers=tenant.headers
    )
    assert changed.json()["email"] == EMAIL

    async with superuser(databases, tenant.shard_id) as conn:
        # Every row of every table of the tenant, as PostgreSQL renders it (bytea as hex).
        tables = [
            r["relname"]
            for r in await conn.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r'"
            )
        ]
        dump = []
        for table in tables:
            cols = {
                r["attname"]
                for r in await conn.fetch(
                    "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0",
                    table,
                )
            }
            if "tenant_id" in cols:
                rows = await conn.fetch(
                    f'SELECT t::text AS r FROM "{table}" t WHERE tenant_id = $1',
                    uuid.UUID(tenant.id),
                )
                dump += [r["r"] for r in rows]
        stored = await conn.fetchrow(
            "SELECT email_enc, phone_enc, tax_id_enc, email_bidx, enc_version "
            "FROM contact WHERE id = $1",
            uuid.UUID(contact["id"]),
        )
    assert dump
    assert not _leaks("\n".join(dump))
    # The raw bytes too (hex rendering above would hide ASCII plaintext in bytea).
    for blob in (stored["email_enc"], stored["phone_enc"], stored["tax_id_enc"]):
        assert not _leaks(blob.decode("latin-1"))
    assert len(stored["email_bidx"]) == 16
    assert stored["enc_version"] == 1


async def test_idempotency_records_and_caches_hold_no_plaintext(
    app_client: httpx.AsyncClient, tenant: Tenant, databases: TestDatabases, settings: Settings
) -> None:
    key = f"enc-{uuid.uuid4()}"
    body = {"last_name": "Hopper", "email": EMAIL, "phone": PHONE, "tax_id": TAX_ID}
    first = await app_client.post(
        "/v1/contacts", json=body, headers={**tenant.headers, "Idempotency-Key": key}
    )
    assert first.status_code == 201, first.text
    replay = await app_client.post(
        "/v1/contacts", json=body, headers={**tenant.headers, "Idempotency-Key": key}
    )
    # The replay is decrypted from the stored ciphertext: the same answer.
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json() == first.json()
    async with superuser(databases, tenant.shard_id) as conn:
        stored = await conn.fetchval(
            "SELECT response_body::text FROM idempotency_key WHERE tenant_id = $1 AND key = $2",
            uuid.UUID(tenant.id),
            key,
        )
    assert stored
    assert not _leaks(stored)

    account = await app_client.post(
        "/v1/accounts", json={"name": "Navy", "tax_id": TAX_ID}, headers=tenant.headers
    )
    # Accounts are cached in Redis (L2): their entries must carry ciphertext only.
    for _ in range(2):
        got = await app_client.get(f"/v1/accounts/{account.json()['id']}", headers=tenant.headers)
        assert got.json()["tax_id"] == TAX_ID
        listed = await app_client.get("/v1/accounts", headers=tenant.headers)
        assert listed.json()["data"][0]["tax_id"] == TAX_ID
    assert settings.redis_url
    redis = Redis.from_url(settings.redis_url)
    try:
        values = [await redis.get(k) async for k in redis.scan_iter(match=f"m:{{t:{tenant.id}}}:*")]
    finally:
        await redis.aclose()
    assert any(v for v in values), "the account was expected in Redis"
    assert not _leaks(b"\n".join(v for v in values if v).decode("latin-1"))
    # And the in-process cache (L1) of contacts and accounts alike (a white-box look:
    # entries are keyed by tenant first).
    await app_client.get(f"/v1/contacts/{first.json()['id']}", headers=tenant.headers)
    await app_client.get("/v1/contacts", headers=tenant.headers)
    entries = runtime_of(app_client).cache._l1._data
    mine = [repr(v) for k, v in entries.items() if isinstance(k, tuple) and k[0] == tenant.id]
    assert len(mine) >= 3
    assert not _leaks("\n".join(mine))
