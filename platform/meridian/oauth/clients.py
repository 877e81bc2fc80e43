"""OAuth client records: creation (secret shown once) and look-up."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from meridian.oauth.models import OAuthClient


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    secret_hash: str
    tenant_id: UUID | None
    scope: str
    revoked: bool
    role: str = "integration"  # what the client acts as inside its tenant

    def secret_matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret_hash, hash_secret(secret))


@dataclass(frozen=True, slots=True)
class NewClient:
    client_id: str
    client_secret: str
    tenant_id: UUID | None
    scope: str


async def create_client(
    conn: AsyncConnection,
    *,
    name: str,
    scope: str,
    tenant_id: UUID | None,
    role: str = "integration",
) -> NewClient:
    prefix = "mc_" if tenant_id is not None else "ma_"
    client_id = prefix + secrets.token_urlsafe(18)
    secret = secrets.token_urlsafe(32)
    await conn.execute(
        insert(OAuthClient).values(
            client_id=client_id,
            secret_hash=hash_secret(secret),
            tenant_id=tenant_id,
            name=name,
            scope=scope,
            role=role,
        )
    )
    return NewClient(client_id=client_id, client_secret=secret, tenant_id=tenant_id, scope=scope)


async def find_client(conn: AsyncConnection, client_id: str) -> ClientRecord | None:
    stmt = select(
        OAuthClient.client_id,
        OAuthClient.secret_hash,
        OAuthClient.tenant_id,
        OAuthClient.scope,
        OAuthClient.revoked_at,
        OAuthClient.role,
    ).where(OAuthClient.client_id == client_id)
    row = (await conn.execute(stmt)).one_or_none()
    if row is None:
        return None
    return ClientRecord(
        client_id=row.client_id,
        secret_hash=row.secret_hash,
        tenant_id=row.tenant_id,
        scope=row.scope,
        revoked=row.revoked_at is not None,
        role=row.role,
    )
