"""Field encryption: round trips, binding to row/column/tenant, blind indexes."""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenancy.crypto import (
    DecryptionError,
    FieldCipher,
    key_version_of,
    normalize_email,
    normalize_phone,
    normalize_tax_id,
)

TENANT = uuid.uuid4()
KEY = os.urandom(32)


@given(st.text(max_size=300))
def test_round_trip(plaintext: str) -> None:
    cipher = FieldCipher(TENANT, 3, KEY)
    row = uuid.uuid4()
    blob = cipher.encrypt("contact", "email", row, plaintext)
    assert key_version_of(blob) == 3
    assert cipher.decrypt("contact", "email", row, blob) == plaintext


def test_same_value_encrypts_differently_each_time() -> None:
    cipher = FieldCipher(TENANT, 1, KEY)
    row = uuid.uuid4()
    a = cipher.encrypt("contact", "email", row, "ada@example.com")
    b = cipher.encrypt("contact", "email", row, "ada@example.com")
    assert a != b
    assert b"ada" not in a


def test_ciphertext_is_bound_to_row_column_tenant_and_version() -> None:
    cipher = FieldCipher(TENANT, 1, KEY)
    row = uuid.uuid4()
    blob = cipher.encrypt("contact", "email", row, "ada@example.com")
    with pytest.raises(DecryptionError):
        cipher.decrypt("contact", "email", uuid.uuid4(), blob)  # another row
    with pytest.raises(DecryptionError):
        cipher.decrypt("contact", "phone", row, blob)  # another column
    with pytest.raises(DecryptionError):
        cipher.decrypt("account", "email", row, blob)  # another table
    with pytest.raises(DecryptionError):
        FieldCipher(uuid.uuid4(), 1, KEY).decrypt("contact", "email", row, blob)  # tenant
    with pytest.raises(DecryptionError):
        FieldCipher(TENANT, 2, KEY).decrypt("contact", "email", row, blob)  # version
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(DecryptionError):
        cipher.decrypt("contact", "email", row, tampered)
    with pytest.raises(DecryptionError):
        cipher.decrypt("contact", "email", row, b"short")


def test_blind_index_is_deterministic_per_tenant_and_column() -> None:
    a = FieldCipher(TENANT, 1, KEY)
    assert a.blind_index("contact", "email", "x@y.com") == a.blind_index(
        "contact", "email", "x@y.com"
    )
    assert len(a.blind_index("contact", "email", "x@y.com")) == 16
    assert a.blind_index("contact", "email", "x@y.com") != a.blind_index(
        "contact", "phone", "x@y.com"
    )
    other = FieldCipher(uuid.uuid4(), 1, os.urandom(32))
    assert a.blind_index("contact", "email", "x@y.com") != other.blind_index(
        "contact", "email", "x@y.com"
    )


def test_normalisation_variants_match() -> None:
    assert normalize_email("  Ada.Lovelace@Example.COM ") == "ada.lovelace@example.com"
    assert normalize_email("\uff21\uff24\uff21@example.com") == "ada@example.com"  # full-width
    assert normalize_phone("+44 (20) 7946-0958") == normalize_phone("+442079460958")
    assert normalize_phone("0044 20 7946 0958") == "+442079460958"
    assert normalize_tax_id("DE 123.456-789") == "123456789"
