"""Field encryption with per-tenant data keys: AES-256-GCM values and blind indexes.

A value is ``0x01 | key version (u32, big-endian) | nonce (12 bytes) | ciphertext+tag``.
Its associated data binds the tenant, table, column and row id, so a ciphertext copied
to another row, column or tenant fails to decrypt. Per-column subkeys come from the
tenant's data key by HKDF-SHA256, one for encryption and one for the blind index, so
the two never share a key. Nothing here logs or keeps plaintext.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import unicodedata
from collections.abc import Callable
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FORMAT_V1 = 0x01
_HEADER = struct.Struct(">BI")  # format, key version
_ROW_ID_LEN = struct.pack(">I", 16)  # a UUID's length prefix in the associated data
NONCE_BYTES = 12
BLIND_INDEX_BYTES = 16


class DecryptionError(Exception):
    """A ciphertext did not authenticate: wrong row/column/tenant, or tampered.

    The message never includes key material or plaintext."""


def _lp(*parts: bytes) -> bytes:
    """Length-prefixed concatenation: no two different tuples encode alike."""
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def key_version_of(blob: bytes) -> int:
    if len(blob) < _HEADER.size + NONCE_BYTES + 16 or blob[0] != FORMAT_V1:
        raise DecryptionError("not a Meridian v1 ciphertext")
    return int(_HEADER.unpack_from(blob)[1])


class FieldCipher:
    """Encrypts the fields of one tenant with one data-key version.

    Subkeys and AESGCM objects are derived once per column and kept, since deriving
    costs more than encrypting a short field.
    """

    def __init__(self, tenant_id: UUID, version: int, data_key: bytes) -> None:
        if len(data_key) != 32:
            raise ValueError("data keys are 32 bytes")
        self.tenant_id = tenant_id
        self.version = version
        self._key = data_key
        self._aead: dict[tuple[str, str], AESGCM] = {}
        self._mac: dict[tuple[str, str], bytes] = {}
        # The associated data is constant but for the row id: its parts before and after
        # the row id are built once per column (the hot path decrypts a page of rows).
        self._aad_parts: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self._version_part = _lp(struct.pack(">I", version))

    def _subkey(self, purpose: str, table: str, column: str) -> bytes:
        info = f"meridian:{purpose}:v1|{table}|{column}".encode()
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=self.tenant_id.bytes, info=info)
        return hkdf.derive(self._key)

    def _cipher(self, table: str, column: str) -> AESGCM:
        cipher = self._aead.get((table, column))
        if cipher is None:
            cipher = self._aead[(table, column)] = AESGCM(self._subkey("enc", table, column))
        return cipher

    def _aad(self, table: str, column: str, row_id: UUID) -> bytes:
        # Equal to _lp(format, tenant, table, column, row id, version).
        prefix = self._aad_parts.get((table, column))
        if prefix is None:
            prefix = self._aad_parts[(table, column)] = (
                _lp(bytes([FORMAT_V1]), self.tenant_id.bytes, table.encode(), column.encode()),
                self._version_part,
            )
        return prefix[0] + _ROW_ID_LEN + row_id.bytes + prefix[1]

    def encrypt(self, table: str, column: str, row_id: UUID, plaintext: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)  # fresh and random per value
        ct = self._cipher(table, column).encrypt(
            nonce, plaintext.encode(), self._aad(table, column, row_id)
        )
        return _HEADER.pack(FORMAT_V1, self.version) + nonce + ct

    def decrypt(self, table: str, column: str, row_id: UUID, blob: bytes) -> str:
        if key_version_of(blob) != self.version:
            raise DecryptionError("ciphertext belongs to another key version")
        nonce = blob[_HEADER.size : _HEADER.size + NONCE_BYTES]
        try:
            pt = self._cipher(table, column).decrypt(
                nonce, blob[_HEADER.size + NONCE_BYTES :], self._aad(table, column, row_id)
            )
        except InvalidTag as exc:
            raise DecryptionError(
                f"{table}.{column} of row {row_id} does not authenticate"
            ) from exc
        return pt.decode()

    def blind_index(self, table: str, column: str, normalized: str) -> bytes:
        """Truncated HMAC-SHA256 of a normalised value: equality search without
        decrypting, and no linkage across tenants (each tenant has its own key)."""
        key = self._mac.get((table, column))
        if key is None:
            key = self._mac[(table, column)] = self._subkey("bidx", table, column)
        return hmac.new(key, normalized.encode(), hashlib.sha256).digest()[:BLIND_INDEX_BYTES]


# -- normalisation for blind indexes ------------------------------------------------------


def normalize_email(value: str) -> str:
    return unicodedata.normalize("NFKC", value).strip().casefold()


def normalize_phone(value: str) -> str:
    """E.164-style: a leading + kept, every other non-digit dropped; ``00`` → ``+``."""
    text = unicodedata.normalize("NFKC", value).strip()
    digits = "".join(ch for ch in text if ch.isdigit())
    if text.startswith("+"):
        return "+" + digits
    if digits.startswith("00"):
        return "+" + digits[2:]
    return digits


def normalize_tax_id(value: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKC", value) if ch.isdigit())


NORMALIZERS: dict[str, Callable[[str], str]] = {
    "email": normalize_email,
    "phone": normalize_phone,
    "tax_id": normalize_tax_id,
    # Webhook secrets are compared exactly (their index only tells a rotation happened).
    "secret": str,
}
