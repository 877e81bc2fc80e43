"""Refresh tokens in the control plane: opaque, stored as SHA-256, rotated on every use.

Each login starts a *family*; every refresh marks the presented token used and issues
the next one in the same family. A used token presented again means two parties hold
it (the legitimate client and a thief, or a client racing itself), so the whole family
is revoked (RFC 9700 §4.14.2). Claiming a token is one ``UPDATE … WHERE used_at IS
NULL``, so of two concurrent uses exactly one wins.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import func

from meridian.ids import new_id
from meridian.oauth.models import RefreshToken


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    # 256 random bits: a fast hash suffices (nothing to brute-force), like client secrets.
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    id: UUID
    family_id: UUID
    tenant_id: UUID
    user_id: UUID
    client_id: str
    scope: str
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None


async def find_refresh_token(conn: AsyncConnection, token: str) -> RefreshRecord | None:
    stmt = select(
        RefreshToken.id,
        RefreshToken.family_id,
        RefreshToken.tenant_id,
        RefreshToken.user_id,
        RefreshToken.client_id,
        RefreshToken.scope,
        RefreshToken.expires_at,
        RefreshToken.used_at,
        RefreshToken.revoked_at,
    ).where(RefreshToken.token_hash == hash_refresh_token(token))
    row = (await conn.execute(stmt)).one_or_none()
    if row is None:
        return None
    return RefreshRecord(
        id=row.id,
        family_id=row.family_id,
        tenant_id=row.tenant_id,
        user_id=row.user_id,
        client_id=row.client_id,
        scope=row.scope,
        expires_at=row.expires_at,
        used_at=row.used_at,
        revoked_at=row.revoked_at,
    )


async def store_refresh_token(
    conn: AsyncConnection,
    token: str,
    *,
    family_id: UUID,
    tenant_id: UUID,
    user_id: UUID,
    client_id: str,
    scope: str,
    ttl: int,
) -> None:
    await conn.execute(
        insert(RefreshToken).values(
            id=new_id(),
            token_hash=hash_refresh_token(token),
            family_id=family_id,
            tenant_id=tenant_id,
            user_id=user_id,
            client_id=client_id,
            scope=scope,
            expires_at=func.now() + timedelta(seconds=ttl),
        )
    )


async def claim_refresh_token(conn: AsyncConnection, token_id: UUID) -> bool:
    """Mark a token used; False when it was used or revoked meanwhile (a concurrent
    use won the row lock first, or the family was revoked)."""
    claimed = await conn.scalar(
        update(RefreshToken)
        .where(
            RefreshToken.id == token_id,
            RefreshToken.used_at.is_(None),
            RefreshToken.revoked_at.is_(None),
        )
        .values(used_at=func.now())
        .returning(RefreshToken.id)
    )
    return claimed is not None


async def revoke_family(conn: AsyncConnection, family_id: UUID) -> int:
    result = await conn.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    return int(result.rowcount)


async def revoke_for(conn: AsyncConnection, tenant_id: UUID, user_id: UUID | None) -> int:
    """Revoke every live refresh token of a user (or, with ``user_id=None``, a tenant)."""
    stmt = update(RefreshToken).where(
        RefreshToken.tenant_id == tenant_id,
        RefreshToken.used_at.is_(None),  # used ones are dead already (and count as reuse)
        RefreshToken.revoked_at.is_(None),
    )
    if user_id is not None:
        stmt = stmt.where(RefreshToken.user_id == user_id)
    result = await conn.execute(stmt.values(revoked_at=func.now()))
    return int(result.rowcount)
