"""Signing keys: kept in the control plane so every API instance signs and verifies alike.

Exactly one key is ``active`` (it signs); ``next`` keys are already published in the
JWKS so verifiers trust them before they sign; ``retired`` keys stay published until
every token they signed has expired.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meridian.oauth.models import SigningKey

ALGORITHM = "RS256"
# Serialises key creation and rotation across instances and operators.
_KEY_LOCK_ID = 0x4D455249  # "MERI"
# Verifiers accept tokens up to this long after ``exp`` (TokenVerifier's leeway).
VERIFY_LEEWAY = 30


def generate_signing_key() -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A new RSA key: (kid, private JWK, public JWK)."""
    kid = datetime.now(UTC).strftime("%Y%m%d") + "-" + secrets.token_hex(4)
    key = RSAKey.generate_key(2048, parameters={"kid": kid, "alg": ALGORITHM, "use": "sig"})
    return kid, key.as_dict(private=True), key.as_dict(private=False)


def retired_window(token_ttl: int, refresh_interval: float) -> timedelta:
    """How long a retired key stays published: instances that have not yet reloaded
    the keys sign with it for up to ``refresh_interval`` after its retirement, each
    token lives ``token_ttl``, and verifiers allow ``VERIFY_LEEWAY`` past expiry."""
    return timedelta(seconds=token_ttl + refresh_interval + VERIFY_LEEWAY)


class KeyStore:
    def __init__(
        self, control: AsyncEngine, *, token_ttl: int, refresh_interval: float = 30.0
    ) -> None:
        self._control = control
        self._window = retired_window(token_ttl, refresh_interval)
        self._active: RSAKey | None = None
        self._published: list[dict[str, Any]] = []
        self._verify = KeySet([])
        self._loaded_at = 0.0

    async def ensure_active_key(self) -> None:
        """Create the first signing key if there is none (idempotent, race-free)."""
        async with self._control.begin() as conn:
            await conn.execute(select(func.pg_advisory_xact_lock(_KEY_LOCK_ID)))
            count = await conn.scalar(
                select(func.count()).select_from(SigningKey).where(SigningKey.state == "active")
            )
            if not count:
                kid, private, public = generate_signing_key()
                await conn.execute(
                    insert(SigningKey).values(
                        kid=kid,
                        alg=ALGORITHM,
                        state="active",
                        private_jwk=private,
                        public_jwk=public,
                    )
                )
        await self.refresh()

    async def refresh(self) -> None:
        horizon = datetime.now(UTC) - self._window
        stmt = (
            select(SigningKey.kid, SigningKey.state, SigningKey.private_jwk, SigningKey.public_jwk)
            .where((SigningKey.state != "retired") | (SigningKey.retired_at > horizon))
            .order_by(SigningKey.created_at)
        )
        async with self._control.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        active = [r for r in rows if r.state == "active"]
        if active:
            self._active = RSAKey.import_key(active[-1].private_jwk)
        self._published = [dict(r.public_jwk) for r in rows]
        self._verify = KeySet([RSAKey.import_key(jwk) for jwk in self._published])
        self._loaded_at = time.monotonic()

    def signing_key(self) -> RSAKey:
        if self._active is None:
            raise RuntimeError("no active signing key loaded")
        return self._active

    def jwks(self) -> dict[str, Any]:
        return {"keys": list(self._published)}

    def verification_keys(self) -> KeySet:
        return self._verify

    def knows(self, kid: str) -> bool:
        return any(k.get("kid") == kid for k in self._published)

    async def refresh_if_stale(self, min_interval: float = 5.0) -> bool:
        """Reload when a token names an unknown kid, at most once per ``min_interval``."""
        if time.monotonic() - self._loaded_at < min_interval:
            return False
        await self.refresh()
        return True


# -- rotation (``meridian keys rotate`` / ``keys list``) ----------------------------------


class KeyRotationError(Exception):
    """A rotation step that would be unsafe now; the message says what to do."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    kid: str
    state: str  # next | active | retired
    created_at: datetime  # for a next key: when it was published
    retired_at: datetime | None
    published: bool  # in the JWKS now
    until: datetime | None  # next: may sign from; retired: published until


@dataclass(frozen=True, slots=True)
class Rotation:
    action: str  # "published" (a next key) or "activated" (next → active)
    kid: str
    retired: str | None = None  # the key that stopped signing
    can_activate_at: datetime | None = None


async def _lock(conn: AsyncConnection) -> datetime:
    await conn.execute(select(func.pg_advisory_xact_lock(_KEY_LOCK_ID)))
    now: datetime = (await conn.execute(select(func.now()))).scalar_one()
    return now


async def rotate(
    control: AsyncEngine,
    *,
    activation_delay: float,
    window: timedelta,
    activate_only: bool = False,
) -> Rotation:
    """One step of a two-step rotation.

    Without a ``next`` key: publish one (it is in the JWKS but signs nothing). With one
    published at least ``activation_delay`` ago (the JWKS cache time, so every verifier
    already trusts it): next → active, active → retired. Retired keys past ``window``
    are deleted. ``activate_only`` never publishes, only promotes.
    """
    async with control.begin() as conn:
        now = await _lock(conn)
        await conn.execute(
            delete(SigningKey).where(
                SigningKey.state == "retired", SigningKey.retired_at < now - window
            )
        )
        upcoming = (
            await conn.execute(
                select(SigningKey.kid, SigningKey.created_at)
                .where(SigningKey.state == "next")
                .order_by(SigningKey.created_at)
            )
        ).first()
        if upcoming is None:
            if activate_only:
                raise KeyRotationError("There is no next key; run `meridian keys rotate` first.")
            kid, private, public = generate_signing_key()
            await conn.execute(
                insert(SigningKey).values(
                    kid=kid, alg=ALGORITHM, state="next", private_jwk=private, public_jwk=public
                )
            )
            ready = now + timedelta(seconds=activation_delay)
            return Rotation("published", kid, can_activate_at=ready)
        ready = upcoming.created_at + timedelta(seconds=activation_delay)
        if now < ready:
            raise KeyRotationError(
                f"The next key {upcoming.kid} was published at {upcoming.created_at:%H:%M:%S}; "
                f"verifiers may not have it yet. Activate it after {ready.isoformat()}."
            )
        retired = await conn.scalar(
            update(SigningKey)
            .where(SigningKey.state == "active")
            .values(state="retired", retired_at=now)
            .returning(SigningKey.kid)
        )
        await conn.execute(
            update(SigningKey).where(SigningKey.kid == upcoming.kid).values(state="active")
        )
        return Rotation("activated", upcoming.kid, retired=retired)


async def list_keys(
    control: AsyncEngine, *, activation_delay: float, window: timedelta
) -> list[KeyInfo]:
    async with control.connect() as conn:
        now: datetime = (await conn.execute(select(func.now()))).scalar_one()
        rows = (
            await conn.execute(
                select(
                    SigningKey.kid, SigningKey.state, SigningKey.created_at, SigningKey.retired_at
                ).order_by(SigningKey.created_at)
            )
        ).all()
    keys = []
    for r in rows:
        until: datetime | None = None
        published = True
        if r.state == "next":
            until = r.created_at + timedelta(seconds=activation_delay)
        elif r.state == "retired" and r.retired_at is not None:
            until = r.retired_at + window
            published = now < until
        keys.append(KeyInfo(r.kid, r.state, r.created_at, r.retired_at, published, until))
    return keys
