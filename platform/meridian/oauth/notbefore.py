"""Emergency revocation of access tokens: a per-user and per-tenant not-before time.

JWT access tokens cannot be recalled, so every request compares the token's ``iat``
with the latest not-before of its tenant (subject ``*``) and of its user. The check
runs on every request, so the time is read through the two-level cache; a revocation
invalidates the tenant's entries on every instance (pub/sub, milliseconds). So while
that feed is live an entry stays in L1 until invalidated (``hold``); when it is not,
the 5 s L1 TTL bounds the delay.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from uuid import UUID

import orjson
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from cache.codec import Codec
from cache.core import Policy, TwoLevelCache
from meridian.oauth.models import TokenRevocation
from meridian.oauth.refresh import revoke_for

KIND = "nbf"
TENANT_SUBJECT = "*"
# Loaders always return a number (0.0: never revoked), so "nothing revoked", the usual
# answer, is cached as long as any other value. L1 5 s: the bound without Redis.
_POLICY = Policy(ttl=300.0, l1_ttl=5.0)
_CODEC: Codec[float] = Codec(orjson.dumps, lambda raw: float(orjson.loads(raw)))
# The token endpoint waits at most this long for a fresh not-before to pass.
_MAX_MINT_WAIT = 2.0


@dataclass(frozen=True, slots=True)
class Revocation:
    tenant_id: UUID
    subject: str  # a user id, or "*" for the whole tenant
    not_before: datetime
    refresh_tokens_revoked: int


class NotBeforeStore:
    def __init__(self, control: AsyncEngine, cache: TwoLevelCache, *, hold: float = 0.0) -> None:
        self._control = control
        self._cache = cache
        self._policy = replace(_POLICY, hold=hold)

    async def not_before(self, tenant_id: UUID, user_id: UUID | None) -> float:
        """Unix time before which tokens of this user (or client) of the tenant are void."""
        item = str(user_id) if user_id is not None else TENANT_SUBJECT
        value = await self._cache.get_or_load(
            str(tenant_id), KIND, item, lambda: self._load(tenant_id, user_id), _CODEC, self._policy
        )
        return value or 0.0

    async def _load(self, tenant_id: UUID, user_id: UUID | None) -> float:
        subjects = [TENANT_SUBJECT] if user_id is None else [TENANT_SUBJECT, str(user_id)]
        stmt = select(func.max(TokenRevocation.not_before)).where(
            TokenRevocation.tenant_id == tenant_id, TokenRevocation.subject.in_(subjects)
        )
        async with self._control.connect() as conn:
            latest: datetime | None = await conn.scalar(stmt)
        return latest.timestamp() if latest is not None else 0.0

    async def revoke(self, tenant_id: UUID, user_id: UUID | None) -> Revocation:
        """Void every token of the user (or tenant) issued until now, and its refresh
        tokens. The time comes from this instance's clock, like the tokens' ``iat``."""
        subject = str(user_id) if user_id is not None else TENANT_SUBJECT
        now = datetime.now(UTC)
        stmt = pg_insert(TokenRevocation).values(
            tenant_id=tenant_id, subject=subject, not_before=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[TokenRevocation.tenant_id, TokenRevocation.subject],
            # Never move a not-before backwards (two instances with slightly skewed clocks).
            set_={"not_before": func.greatest(TokenRevocation.not_before, now)},
        )
        async with self._control.begin() as conn:
            await conn.execute(stmt)
            revoked = await revoke_for(conn, tenant_id, user_id)
        # After the commit, so no instance reloads the old value into a new generation.
        await self._cache.invalidate(str(tenant_id), KIND)
        return Revocation(tenant_id, subject, now, revoked)

    async def wait_until_past(self, tenant_id: UUID, user_id: UUID | None) -> None:
        """Tokens carry a whole-second ``iat``: one minted in the same second as a
        revocation would be born void (``iat`` < not-before). Right after a revocation,
        wait for the next second before minting (at most once, at most ~1 s)."""
        not_before = await self.not_before(tenant_id, user_id)
        delay = math.ceil(not_before) - time.time()
        if 0 < delay <= _MAX_MINT_WAIT:
            await asyncio.sleep(delay)
