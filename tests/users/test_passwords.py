"""Password hashing: argon2id for new hashes, earlier scrypt hashes still verify."""

from __future__ import annotations

from meridian.users.passwords import (
    _hash_scrypt,
    hash_password,
    needs_rehash,
    verify_in_thread,
    verify_password,
)


def test_argon2id_round_trip_and_no_rehash_needed() -> None:
    encoded = hash_password("correct horse battery staple")
    assert encoded.startswith("$argon2id$")
    assert "correct horse" not in encoded
    assert verify_password("correct horse battery staple", encoded)
    assert not verify_password("correct horse battery stapler", encoded)
    assert not needs_rehash(encoded)
    assert hash_password("same") != hash_password("same")  # salted


def test_earlier_scrypt_hashes_verify_and_are_flagged_for_upgrade() -> None:
    old = _hash_scrypt("an old password")
    assert old.startswith("scrypt$16384$8$1$")
    assert verify_password("an old password", old)
    assert not verify_password("another password", old)
    assert needs_rehash(old)


def test_malformed_hashes_never_verify() -> None:
    for encoded in ("", "$argon2id$garbage", "scrypt$1$2$3", "plaintext"):
        assert not verify_password("x", encoded)
        assert needs_rehash(encoded)


async def test_verify_without_a_stored_hash_fails_after_real_work() -> None:
    assert not await verify_in_thread("anything", None)
    assert await verify_in_thread("pw-123456", hash_password("pw-123456"))
