"""Password hashing behind a three-function interface, so the scheme can change.

New hashes are argon2id (argon2-cffi's defaults: RFC 9106's low-memory profile, 64 MiB,
t=3, p=4). Hashes written earlier with scrypt (``scrypt$n$r$p$salt$hash``, n=2**14,
r=8, p=1) still verify, and ``needs_rehash`` flags them so each user moves to argon2id
at their next login.

Hashing is CPU- and memory-heavy: the async helpers run it in a worker thread, at most
a few at a time, so a burst of logins neither blocks the event loop nor allocates
16 MiB per concurrent request. Passwords are never logged or put into exceptions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

import anyio
import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

SCHEME = "scrypt"
N = 2**14
R = 8
P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# 128 * r * n bytes of working memory; allow headroom over the 16 MiB it needs.
_MAXMEM = 64 * 1024 * 1024
# Bounds the memory and CPU hashing may take at once (16 MiB each).
HASH_CONCURRENCY = 4

MIN_LENGTH = 8
# Long enough for any passphrase; a bound keeps one request from hashing megabytes.
MAX_LENGTH = 1024


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=_MAXMEM)


_ARGON2 = PasswordHasher()


def hash_password(password: str) -> str:
    return _ARGON2.hash(password)


def _hash_scrypt(password: str) -> str:
    """The earlier scheme; kept to write test fixtures of old hashes."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, N, R, P, HASH_BYTES)
    return f"{SCHEME}${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        return None
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error):
        return None
    # Refuse parameters that would make verification a denial of service (or fail).
    if not (2 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        return None
    if 128 * r * n > _MAXMEM // 2 or not salt or not 16 <= len(digest) <= 64:
        return None
    return n, r, p, salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches; False (never an error) for a malformed encoding."""
    if encoded.startswith("$argon2"):
        try:
            return _ARGON2.verify(encoded, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
    parsed = _parse(encoded)
    if parsed is None:
        return False
    n, r, p, salt, digest = parsed
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(digest)), digest)


def needs_rehash(encoded: str) -> bool:
    """Whether a stored hash uses another scheme or weaker parameters than today's."""
    if encoded.startswith("$argon2"):
        try:
            return _ARGON2.check_needs_rehash(encoded)
        except InvalidHashError:
            return True
    return True  # scrypt (or anything else): upgrade to argon2id


# A hash to verify against when there is no user, so "no such user" and "wrong
# password" take the same time (no account enumeration by timing).
_DUMMY = hash_password(secrets.token_urlsafe(16))

_limiter: anyio.CapacityLimiter | None = None


def _get_limiter() -> anyio.CapacityLimiter:
    # Created on first use: a limiter belongs to the running event loop's backend.
    global _limiter
    if _limiter is None:
        _limiter = anyio.CapacityLimiter(HASH_CONCURRENCY)
    return _limiter


async def hash_in_thread(password: str) -> str:
    return await anyio.to_thread.run_sync(hash_password, password, limiter=_get_limiter())


async def verify_in_thread(password: str, encoded: str | None) -> bool:
    """Verify in a worker thread; with no stored hash, spend the same time and fail."""
    target = encoded if encoded is not None else _DUMMY
    ok = await anyio.to_thread.run_sync(verify_password, password, target, limiter=_get_limiter())
    return ok and encoded is not None
