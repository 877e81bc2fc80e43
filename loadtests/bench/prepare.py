"""The benchmark's own databases: a control plane and two shards, migrated as
``meridian migrate`` does, one tenant per shard onboarded through the admin API, and
contacts written straight into the shards (COPY), which is quicker than the API and
leaves the same rows behind."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import create_async_engine

from meridian.app import create_app
from meridian.contacts.repository import SORTABLE, ContactRepository
from meridian.crud.compiled import compile_statement, compile_template
from meridian.crud.pagination import DEFAULT_LIMIT, parse_sort
from meridian.encryption.fields import encrypt_values
from meridian.ids import new_id
from meridian.operations import create_admin_client, migrate_all
from meridian.settings import Settings, ShardConfig
from tenancy.crypto import FieldCipher
from tenancy.keyring import TenantKeyring

# Authlib accepts plain http only for a loopback issuer; the servers need not listen on it.
ISSUER = "http://127.0.0.1:8000"
# The benchmark platform's key-encryption key: fixed, for throw-away databases only.
BENCH_KEK = "bWVyaWRpYW4tYmVuY2gta2VrLTMyLWJ5dGVzLWxvbmc="
SHARDS = {"us-1": ("us", "us1"), "eu-1": ("eu", "eu1")}


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    superuser: str
    app_role: str

    def raw(self, db: str, user: str | None = None) -> str:
        return f"postgresql://{user or self.superuser}@{self.host}:{self.port}/{db}"

    def sqlalchemy(self, db: str, user: str | None = None) -> str:
        return f"postgresql+asyncpg://{user or self.superuser}@{self.host}:{self.port}/{db}"


@dataclass(frozen=True)
class BenchTenant:
    id: UUID
    shard_id: str
    token: str
    contact_ids: list[UUID]


@dataclass(frozen=True)
class Prepared:
    settings: Settings
    databases: dict[str, str]  # "control" or shard id -> database name
    tenants: list[BenchTenant]  # one per shard, in SHARDS order


def database_names(prefix: str) -> dict[str, str]:
    names = {"control": f"{prefix}_control"}
    names.update({sid: f"{prefix}_{suffix}" for sid, (_, suffix) in SHARDS.items()})
    return names


def bench_settings(
    pg: PgServer, databases: dict[str, str], *, redis_url: str | None, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "control_dsn": pg.sqlalchemy(databases["control"], pg.app_role),
        "control_admin_dsn": pg.sqlalchemy(databases["control"]),
        "shards": [
            ShardConfig(
                id=sid,
                region=region,
                dsn=pg.sqlalchemy(databases[sid], pg.app_role),
                admin_dsn=pg.sqlalchemy(databases[sid]),
            )
            for sid, (region, _) in SHARDS.items()
        ],
        "app_db_role": pg.app_role,
        "redis_url": redis_url,
        "issuer": ISSUER,
        # Tokens are issued once and must outlive the whole run.
        "access_token_ttl": 4 * 3600,
        "kek": BENCH_KEK,
    }
    values.update(overrides)
    return Settings(**values)


def caches(on: bool) -> dict[str, str]:
    """The record and list caches of a `meridian serve` process, on or off."""
    value = "true" if on else "false"
    return {"MERIDIAN_CACHE_RECORDS": value, "MERIDIAN_CACHE_LISTS": value}


def server_env(settings: Settings) -> dict[str, str]:
    """The MERIDIAN_* environment that gives a `meridian serve` process these settings."""
    shards = [s.model_dump(exclude_none=True) for s in settings.shards]
    env = {
        "MERIDIAN_CONTROL_DSN": settings.control_dsn,
        "MERIDIAN_SHARDS": json.dumps(shards),
        "MERIDIAN_APP_DB_ROLE": settings.app_db_role,
        "MERIDIAN_ISSUER": settings.issuer,
        "MERIDIAN_AUDIENCE": settings.audience,
        "MERIDIAN_ACCESS_TOKEN_TTL": str(settings.access_token_ttl),
    }
    if settings.kek is not None:
        env["MERIDIAN_KEK"] = settings.kek.get_secret_value()
    if settings.kek_file is not None:
        env["MERIDIAN_KEK_FILE"] = str(settings.kek_file)
    if settings.control_admin_dsn:
        env["MERIDIAN_CONTROL_ADMIN_DSN"] = settings.control_admin_dsn
    if settings.redis_url:
        env["MERIDIAN_REDIS_URL"] = settings.redis_url
    # The limiter runs on every request (one Redis call), as in production, but a bench
    # drives one tenant far past any plan: none of its requests may be refused.
    env["MERIDIAN_PLANS"] = json.dumps(
        {
            plan: {
                **limits.model_dump(),
                "tenant_per_minute": 600_000,
                "caller_per_minute": 600_000,
            }
            for plan, limits in settings.plans.items()
        }
    )
    return env


def contact_sql() -> tuple[str, str]:
    """Meridian's own SQL for GET /v1/contacts/{id} and the first page of GET /v1/contacts
    (default sort), as the bare endpoint must run: ($1 tenant, $2 id) and ($1 tenant,
    $2 limit + 1)."""
    columns = ContactRepository.read_columns()
    get_stmt = select(*columns).where(
        ContactRepository.attr("tenant_id") == bindparam("tenant_id"),
        ContactRepository.attr("id") == bindparam("id"),
    )
    get = compile_template(get_stmt)
    if get is None or get.names != ("tenant_id", "id"):
        raise RuntimeError(f"unexpected by-id parameters {get and get.names}")
    get_sql = get.sql
    page = ContactRepository.page_statement(
        uuid.UUID(int=1),
        where=[],
        sort=parse_sort(None, SORTABLE, "created_at"),
        limit=DEFAULT_LIMIT,
        cursor=None,
    )
    list_sql, args = compile_statement(page)
    if args != [uuid.UUID(int=1), DEFAULT_LIMIT + 1]:
        raise RuntimeError(f"unexpected list parameters {args}")
    return get_sql, list_sql


async def ensure_app_role(pg: PgServer) -> None:
    """The unprivileged role Meridian connects as (LOGIN, no BYPASSRLS, owns nothing)."""
    conn = await asyncpg.connect(pg.raw("postgres"))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", pg.app_role):
            with contextlib.suppress(asyncpg.DuplicateObjectError):
                await conn.execute(f'CREATE ROLE "{pg.app_role}" LOGIN NOBYPASSRLS')
    finally:
        await conn.close()


async def recreate_databases(pg: PgServer, names: list[str]) -> None:
    conn = await asyncpg.connect(pg.raw("postgres"))
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_databases(pg: PgServer, names: list[str]) -> None:
    conn = await asyncpg.connect(pg.raw("postgres"))
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _token(client: httpx.AsyncClient, client_id: str, secret: str) -> str:
    resp = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )
    resp.raise_for_status()
    token: str = resp.json()["access_token"]
    return token


async def _onboard(
    settings: Settings, prefix: str, shard_ids: Sequence[str] = tuple(SHARDS)
) -> list[tuple[UUID, str, str]]:
    """One tenant per shard through the admin API: (tenant id, shard id, tenant token)."""
    admin = await create_admin_client(settings, "benchmark admin")
    app = create_app(settings)
    tenants = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
            admin_token = await _token(client, admin.client_id, admin.client_secret)
            headers = {"Authorization": f"Bearer {admin_token}"}
            for shard_id in shard_ids:
                slug = f"{prefix.lower().replace('_', '-')}-{shard_id}"
                body = {"slug": slug, "name": f"Bench {shard_id}"}
                resp = await client.post(
                    "/admin/v1/tenants", json={**body, "shard_id": shard_id}, headers=headers
                )
                if resp.status_code != 201:
                    raise RuntimeError(f"onboarding failed: {resp.status_code} {resp.text}")
                data = resp.json()
                cred = data["client"]
                token = await _token(client, cred["client_id"], cred["client_secret"])
                tenants.append((UUID(data["id"]), shard_id, token))
    return tenants


async def _seed_contacts(url: str, tenant_id: UUID, n: int, cipher: FieldCipher) -> list[UUID]:
    """``n`` contacts of the tenant written into the shard database at ``url`` (libpq URL,
    as a role that bypasses RLS)."""
    start = datetime.now(UTC) - timedelta(days=365)
    rows = []
    for i in range(n):
        created = start + timedelta(minutes=i)
        contact_id = new_id()
        # Stored as the API stores them: encrypted, with blind indexes.
        sealed = encrypt_values(
            cipher,
            "contact",
            contact_id,
            {"email": f"person{i}@example.com", "phone": f"+1 555 {i:07d}", "tax_id": None},
        )
        rows.append(
            (
                tenant_id,
                contact_id,
                f"First{i}",
                f"Last{i % 997}",
                sealed["email_enc"],
                sealed["email_bidx"],
                sealed["phone_enc"],
                sealed["phone_bidx"],
                cipher.version,
                "Buyer" if i % 3 else "Director of Purchasing",
                created,
                created,
            )
        )
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table(
            "contact",
            records=rows,
            columns=[
                "tenant_id",
                "id",
                "first_name",
                "last_name",
                "email_enc",
                "email_bidx",
                "phone_enc",
                "phone_bidx",
                "enc_version",
                "title",
                "created_at",
                "updated_at",
            ],
        )
        await conn.execute("ANALYZE contact")
    finally:
        await conn.close()
    return [row[1] for row in rows]


async def prepare(pg: PgServer, *, prefix: str, contacts: int, redis_url: str | None) -> Prepared:
    databases = database_names(prefix)
    await ensure_app_role(pg)
    await recreate_databases(pg, list(databases.values()))
    settings = bench_settings(pg, databases, redis_url=redis_url)
    await migrate_all(settings)
    tenants = []
    control = create_async_engine(settings.control_dsn)
    try:
        keyring = TenantKeyring(control, settings.key_provider())
        for tenant_id, shard_id, token in await _onboard(settings, prefix):
            cipher = await keyring.active_cipher(tenant_id)
            url = pg.raw(databases[shard_id])
            ids = await _seed_contacts(url, tenant_id, contacts, cipher)
            tenants.append(BenchTenant(tenant_id, shard_id, token, ids))
    finally:
        await control.dispose()
    return Prepared(settings, databases, tenants)
