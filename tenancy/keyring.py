"""Per-tenant data keys, wrapped by a key-encryption key (KEK) from a ``KeyProvider``.

Wrapped keys live in the control plane (``tenant_key``: version, state
active | decrypt_only | destroyed); unwrapped keys only in this process's memory, for a
TTL — never in Redis, logs or errors. Deleting a tenant destroys its wrapped keys first
(crypto-shredding): its rows on the shard become unreadable to anyone.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from primitives.localcache import LocalCache
from tenancy.crypto import FieldCipher
from tenancy.models import TenantKey


class KeyProvider(Protocol):
    """Wraps and unwraps data keys. A KMS or Vault Transit provider implements the same
    two calls (``context`` maps to their encryption context / associated data)."""

    @property
    def primary_id(self) -> str: ...

    async def wrap(self, key: bytes, context: bytes) -> bytes: ...

    async def unwrap(self, wrapped: bytes, context: bytes) -> bytes: ...


class KeyUnavailable(Exception):
    """No usable key: destroyed (crypto-shredded), unknown, or the KEK cannot unwrap it."""


class LocalKeyProvider:
    """KEKs held locally (a file or an environment secret): for development and tests.

    Several KEKs may be loaded so that wrapped keys can be re-wrapped to a new primary.
    The wrapped form is ``len(id) | id | nonce | AES-256-GCM(kek, key, aad=context)``.
    """

    def __init__(self, keks: dict[str, bytes], primary: str) -> None:
        if primary not in keks or any(len(k) != 32 for k in keks.values()):
            raise ValueError("the primary KEK must be among the KEKs, all of 32 bytes")
        self._keks = {kid: AESGCM(k) for kid, k in keks.items()}
        self._primary = primary

    @property
    def primary_id(self) -> str:
        return self._primary

    @classmethod
    def from_secret(cls, secret: str) -> LocalKeyProvider:
        """A base64 32-byte key, or JSON ``{"primary": id, "keys": {id: base64}}``."""
        text = secret.strip()
        if text.startswith("{"):
            doc = json.loads(text)
            keys = {str(k): base64.b64decode(v) for k, v in doc["keys"].items()}
            return cls(keys, str(doc["primary"]))
        return cls({"local-1": base64.b64decode(text)}, "local-1")

    @classmethod
    def from_file(cls, path: Path) -> LocalKeyProvider:
        return cls.from_secret(path.read_text())

    @staticmethod
    def generate_secret() -> str:
        return base64.b64encode(os.urandom(32)).decode()

    async def wrap(self, key: bytes, context: bytes) -> bytes:
        kid = self._primary.encode()
        nonce = os.urandom(12)
        return (
            bytes([len(kid)]) + kid + nonce + self._keks[self._primary].encrypt(nonce, key, context)
        )

    async def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        n = wrapped[0]
        kid = wrapped[1 : 1 + n].decode()
        cipher = self._keks.get(kid)
        if cipher is None:
            raise KeyUnavailable(f"KEK {kid!r} is not loaded")
        nonce, body = wrapped[1 + n : 13 + n], wrapped[13 + n :]
        try:
            return cipher.decrypt(nonce, body, context)
        except InvalidTag as exc:
            raise KeyUnavailable("a wrapped key did not authenticate") from exc


def kek_id_of(wrapped: bytes) -> str:
    return wrapped[1 : 1 + wrapped[0]].decode()


def _context(tenant_id: UUID, version: int) -> bytes:
    # Binds a wrapped key to its tenant and version: swapping rows cannot re-target it.
    return b"meridian-tenant-key" + tenant_id.bytes + struct.pack(">I", version)


# The key under which a shard session's ``info`` carries the deployment's keyring, for
# the writes that seal values inside a repository (see sharding.router's session_info).
SESSION_KEYRING = "meridian.keyring"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    version: int
    state: str


@dataclass(frozen=True, slots=True)
class DataKey:
    """One version of a tenant's data key with its key material (None once destroyed):
    what a tenant archive carries, wrapped under the operator's key. Never stored so,
    and never shown (``repr`` leaves the key out)."""

    version: int
    state: str
    key: bytes | None = field(repr=False)
    created_at: datetime
    destroyed_at: datetime | None = None


def new_data_key(version: int = 1) -> DataKey:
    """A new active data key, in memory only: for a tenant whose rows are sealed before
    its keys are stored (a sandbox copy of an archive seals every value under the new
    tenant's key, then ``restore_keys`` wraps it with the tenant's other rows)."""
    return DataKey(version, "active", os.urandom(32), datetime.now(UTC))


class TenantKeyring:
    def __init__(
        self,
        control: AsyncEngine,
        provider: KeyProvider,
        *,
        ttl: float = 300.0,
        versions_ttl: float | None = None,
        max_tenants: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._control = control
        self._provider = provider
        # Which versions exist and which is active change at rotation: they are re-read
        # more often than unwrapped keys expire, so every instance follows within this.
        versions_ttl = ttl if versions_ttl is None else versions_ttl
        # Bounded: a process serving many tenants keeps the keys of the busiest ones
        # (a tenant has one active version and, during a rotation, one or two more).
        self._ciphers: LocalCache[FieldCipher] = LocalCache(4 * max_tenants, ttl=ttl, clock=clock)
        self._active: LocalCache[int] = LocalCache(max_tenants, ttl=versions_ttl, clock=clock)
        self._versions: LocalCache[list[KeyInfo]] = LocalCache(
            max_tenants, ttl=versions_ttl, clock=clock
        )

    # -- lifecycle --------------------------------------------------------------------
    async def create_key(self, conn: AsyncConnection, tenant_id: UUID) -> int:
        """A new active version; the previous active one becomes decrypt-only."""
        version = await self.publish_key(conn, tenant_id)
        await self.activate(conn, tenant_id, version)
        return version

    async def publish_key(self, conn: AsyncConnection, tenant_id: UUID) -> int:
        """A new version, decrypt-only for now: searches of every instance include it
        before any row is written with it (rotation activates it after
        ``versions_ttl``, so no instance's search can miss a row)."""
        current = await conn.scalar(
            select(func.max(TenantKey.version)).where(TenantKey.tenant_id == tenant_id)
        )
        version = int(current or 0) + 1
        wrapped = await self._provider.wrap(os.urandom(32), _context(tenant_id, version))
        await conn.execute(
            insert(TenantKey).values(
                tenant_id=tenant_id,
                version=version,
                wrapped_key=wrapped,
                kek_id=self._provider.primary_id,
                state="decrypt_only",
            )
        )
        self.forget(tenant_id)
        return version

    async def activate(self, conn: AsyncConnection, tenant_id: UUID, version: int) -> None:
        """``version`` encrypts new writes from now on; the previous active one becomes
        decrypt-only."""
        await conn.execute(
            update(TenantKey)
            .where(TenantKey.tenant_id == tenant_id, TenantKey.state == "active")
            .values(state="decrypt_only")
        )
        done = await conn.execute(
            update(TenantKey)
            .where(
                TenantKey.tenant_id == tenant_id,
                TenantKey.version == version,
                TenantKey.state == "decrypt_only",
            )
            .values(state="active")
        )
        if not done.rowcount:
            raise KeyUnavailable(f"key version {version} of tenant {tenant_id} cannot be activated")
        self.forget(tenant_id)

    async def ensure_key(self, conn: AsyncConnection, tenant_id: UUID) -> int:
        """The active version, creating the first one (onboarding; safe to re-run)."""
        version = await conn.scalar(
            select(TenantKey.version).where(
                TenantKey.tenant_id == tenant_id, TenantKey.state == "active"
            )
        )
        return int(version) if version is not None else await self.create_key(conn, tenant_id)

    async def retire(self, conn: AsyncConnection, tenant_id: UUID, version: int) -> None:
        """Destroy a decrypt-only version once no row uses it. In the caller's
        transaction: the caller calls ``forget`` after it commits (forgetting before would
        let a concurrent read cache the versions as they were until then)."""
        await conn.execute(
            update(TenantKey)
            .where(
                TenantKey.tenant_id == tenant_id,
                TenantKey.version == version,
                TenantKey.state == "decrypt_only",
            )
            .values(state="destroyed", wrapped_key=None, destroyed_at=func.now())
        )

    async def destroy_all(self, conn: AsyncConnection, tenant_id: UUID) -> int:
        """Crypto-shredding: every version destroyed, wrapped key material erased (in the
        caller's transaction; the caller calls ``forget`` after it commits)."""
        result = await conn.execute(
            update(TenantKey)
            .where(TenantKey.tenant_id == tenant_id, TenantKey.state != "destroyed")
            .values(state="destroyed", wrapped_key=None, destroyed_at=func.now())
        )
        return int(result.rowcount or 0)

    async def rewrap_all(self, tenant_id: UUID | None = None) -> int:
        """KEK rotation: re-wrap every live tenant key (or one tenant's) under the
        provider's primary KEK."""
        done = 0
        stmt = select(TenantKey.tenant_id, TenantKey.version, TenantKey.wrapped_key).where(
            TenantKey.state != "destroyed",
            TenantKey.kek_id != self._provider.primary_id,
        )
        if tenant_id is not None:
            stmt = stmt.where(TenantKey.tenant_id == tenant_id)
        async with self._control.begin() as conn:
            rows = (await conn.execute(stmt.with_for_update())).all()
            for row in rows:
                ctx = _context(row.tenant_id, row.version)
                key = await self._provider.unwrap(row.wrapped_key, ctx)
                wrapped = await self._provider.wrap(key, ctx)
                await conn.execute(
                    update(TenantKey)
                    .where(TenantKey.tenant_id == row.tenant_id, TenantKey.version == row.version)
                    .values(
                        wrapped_key=wrapped,
                        kek_id=self._provider.primary_id,
                        rewrapped_at=datetime.now(UTC),
                    )
                )
                done += 1
        return done

    # -- backups -----------------------------------------------------------------------
    async def unwrapped_keys(self, conn: AsyncConnection, tenant_id: UUID) -> list[DataKey]:
        """Every version of the tenant's data key, unwrapped (destroyed ones without
        key material), for a tenant archive that wraps them under a key of its own."""
        rows = (
            await conn.execute(
                select(
                    TenantKey.version,
                    TenantKey.state,
                    TenantKey.wrapped_key,
                    TenantKey.created_at,
                    TenantKey.destroyed_at,
                )
                .where(TenantKey.tenant_id == tenant_id)
                .order_by(TenantKey.version)
            )
        ).all()
        keys: list[DataKey] = []
        for row in rows:
            key = None
            if row.state != "destroyed" and row.wrapped_key is not None:
                key = await self._provider.unwrap(row.wrapped_key, _context(tenant_id, row.version))
            keys.append(DataKey(row.version, row.state, key, row.created_at, row.destroyed_at))
        return keys

    async def restore_keys(
        self, conn: AsyncConnection, tenant_id: UUID, keys: Sequence[DataKey]
    ) -> None:
        """Write the tenant's key versions back (a restore from an archive), the live
        ones wrapped under the primary KEK; in the caller's transaction (the caller
        calls ``forget`` after it commits). The tenant must have no key rows."""
        for key in keys:
            live = key.state != "destroyed"
            if live and (key.key is None or len(key.key) != 32):
                raise KeyUnavailable(f"key version {key.version} has no 32-byte key to restore")
            wrapped = (
                await self._provider.wrap(key.key, _context(tenant_id, key.version))
                if live and key.key is not None
                else None
            )
            await conn.execute(
                insert(TenantKey).values(
                    tenant_id=tenant_id,
                    version=key.version,
                    wrapped_key=wrapped,
                    kek_id=self._provider.primary_id,
                    state=key.state,
                    created_at=key.created_at,
                    destroyed_at=key.destroyed_at,
                )
            )

    # -- use ---------------------------------------------------------------------------
    async def versions(self, tenant_id: UUID) -> list[KeyInfo]:
        """The tenant's key versions (cached for the TTL: searches ask on every call)."""
        hit = self._versions.get(tenant_id)
        if hit is not None:
            return hit
        async with self._control.connect() as conn:
            rows = (
                await conn.execute(
                    select(TenantKey.version, TenantKey.state)
                    .where(TenantKey.tenant_id == tenant_id)
                    .order_by(TenantKey.version)
                )
            ).all()
        infos = [KeyInfo(r.version, r.state) for r in rows]
        self._versions.set(tenant_id, infos)
        return infos

    async def active_cipher(self, tenant_id: UUID) -> FieldCipher:
        active = self._active.get(tenant_id)
        if active is None:
            async with self._control.connect() as conn:
                version = await conn.scalar(
                    select(TenantKey.version).where(
                        TenantKey.tenant_id == tenant_id, TenantKey.state == "active"
                    )
                )
            if version is None:
                raise KeyUnavailable(f"tenant {tenant_id} has no active data key")
            active = int(version)
            self._active.set(tenant_id, active)
        return await self.cipher(tenant_id, active)

    async def cipher(self, tenant_id: UUID, version: int) -> FieldCipher:
        """The cipher of one key version (to decrypt rows written with it)."""
        hit = self._ciphers.get((tenant_id, version))
        if hit is not None:
            return hit
        async with self._control.connect() as conn:
            row = (
                await conn.execute(
                    select(TenantKey.wrapped_key, TenantKey.state).where(
                        TenantKey.tenant_id == tenant_id, TenantKey.version == version
                    )
                )
            ).one_or_none()
        if row is None or row.state == "destroyed" or row.wrapped_key is None:
            raise KeyUnavailable(f"key version {version} of tenant {tenant_id} is not usable")
        key = await self._provider.unwrap(row.wrapped_key, _context(tenant_id, version))
        cipher = FieldCipher(tenant_id, version, key)
        self._ciphers.set((tenant_id, version), cipher)
        return cipher

    def forget(self, tenant_id: UUID | None = None) -> None:
        """Drop unwrapped keys from memory (all, or one tenant's)."""
        if tenant_id is None:
            self._ciphers.clear()
            self._active.clear()
            self._versions.clear()
            return
        self._active.delete(tenant_id)
        self._versions.delete(tenant_id)
        self._ciphers.delete_where(lambda key: isinstance(key, tuple) and key[0] == tenant_id)
