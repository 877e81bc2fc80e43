"""Signing keys: kept in the control plane so every API instance signs and verifies alike.

Exactly one key is ``active`` (it signs); ``next`` keys are already published in the
JWKS so verifiers trust them before they sign; ``retired`` keys stay published until
every token they signed has expired.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from meridian.oauth.models import SigningKey

ALGORITHM = "RS256"
# Serialises key creation across instances starting at the same time.
_KEY_LOCK_ID = 0x4D455249  # "MERI"


def generate_signing_key() -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A new RSA key: (kid, private JWK, public JWK)."""
    kid = datetime.now(UTC).strftime("%Y%m%d") + "-" + secrets.token_hex(4)
    key = RSAKey.generate_key(2048, parameters={"kid": kid, "alg": ALGORITHM, "use": "sig"})
    return kid, key.as_dict(private=True), key.as_dict(private=False)


class KeyStore:
    def __init__(self, control: AsyncEngine, *, token_ttl: int) -> None:
        self._control = control
        self._token_ttl = token_ttl
        self._active: RSAKey | None = None
        self._published: list[dict[str, Any]] = []
        self._verify = KeySet([])
        self._loaded_at = 0.0

    async def ensure_active_key(self) -> None:
        """Create the first signing key if there is none (idempotent, race-free)."""
        async with self._control.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _KEY_LOCK_ID})
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
        horizon = datetime.now(UTC) - timedelta(seconds=self._token_ttl + 60)
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
