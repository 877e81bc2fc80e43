"""Encrypting and decrypting the sensitive fields of a row.

The set of sensitive fields is declared here, once per table. On the shard a field
``x`` is stored as ``x_enc`` (AES-256-GCM, see tenancy.crypto) and ``x_bidx`` (its blind
index, for equality search); the row's ``enc_version`` names the data-key version of all
its ciphertexts, which the re-encryption job uses to find rows still on old keys.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

from meridian.errors import MeridianError
from tenancy.crypto import NORMALIZERS, DecryptionError, FieldCipher, key_version_of
from tenancy.keyring import KeyUnavailable, TenantKeyring

log = logging.getLogger("meridian.encryption")

SENSITIVE: dict[str, tuple[str, ...]] = {
    "contact": ("email", "phone", "tax_id"),
    "account": ("tax_id",),
    "lead": ("email", "phone"),
    # A webhook's signing secret: sealed like any sensitive field, so key rotation
    # re-encrypts it and never retires a key version it still uses.
    "webhook": ("secret",),
}


class FieldUnreadable(MeridianError):
    """A stored ciphertext could not be decrypted (tampered, moved, or keys destroyed).

    Carries no plaintext and no key material; the API answers 500 with a stable type
    rather than returning anything that might be another row's data."""

    status_code = 500
    type_slug = "field-unreadable"
    title = "A stored field cannot be decrypted"

    def __init__(self, table: str, column: str, row_id: UUID, reason: str) -> None:
        super().__init__(
            f"The {column} of {table} {row_id} cannot be decrypted; the incident is logged."
        )
        self.table = table
        self.column = column
        self.row_id = row_id
        self.reason = reason


def storage_columns(table: str) -> tuple[str, ...]:
    out: list[str] = []
    for field in SENSITIVE.get(table, ()):
        out += [f"{field}_enc", f"{field}_bidx"]
    return (*out, "enc_version")


def encrypt_values(
    cipher: FieldCipher, table: str, row_id: UUID, plain: Mapping[str, str | None]
) -> dict[str, Any]:
    """Storage columns for every sensitive field of ``table`` (all of them, so that a
    row's ciphertexts always share one key version)."""
    out: dict[str, Any] = {"enc_version": cipher.version}
    for field in SENSITIVE[table]:
        value = plain.get(field)
        if value is None:
            out[f"{field}_enc"] = None
            out[f"{field}_bidx"] = None
        else:
            out[f"{field}_enc"] = cipher.encrypt(table, field, row_id, value)
            out[f"{field}_bidx"] = cipher.blind_index(table, field, NORMALIZERS[field](value))
    return out


def _unreadable(
    tenant_id: UUID, table: str, field: str, row_id: UUID, exc: Exception
) -> FieldUnreadable:
    # The event names the cell and the kind of failure: never plaintext or key material.
    log.error(
        "encrypted field unreadable",
        extra={
            "table": table,
            "column": field,
            "row_id": str(row_id),
            "tenant_id": str(tenant_id),
            "reason": type(exc).__name__,
        },
    )
    return FieldUnreadable(table, field, row_id, type(exc).__name__)


def sealed(row: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a stored row with its ciphertexts as base64 text: the JSON form kept in
    caches and idempotency records (which must hold ciphertext, never plaintext)."""
    return {
        k: base64.b64encode(v).decode() if isinstance(v, bytes | memoryview) else v
        for k, v in row.items()
    }


async def open_rows(
    keyring: TenantKeyring, tenant_id: UUID, table: str, rows: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Copies of stored rows (from the database or a cache) with every ``<field>_enc``
    replaced by the field's plaintext; ``enc_version`` is dropped.

    The hot path of every read: ciphers are looked up once per key version and page,
    then each value costs one AES-GCM decryption. Any failure raises FieldUnreadable.
    """
    fields = SENSITIVE[table]
    ciphers: dict[int, FieldCipher] = {}
    out: list[dict[str, Any]] = []
    for stored in rows:
        row = dict(stored)
        row.pop("enc_version", None)
        row_id = row["id"] if isinstance(row["id"], UUID) else UUID(str(row["id"]))
        for field in fields:
            blob = row.pop(f"{field}_enc", None)
            if blob is None:
                row[field] = None
                continue
            try:
                raw = base64.b64decode(blob) if isinstance(blob, str) else bytes(blob)
                version = key_version_of(raw)
                cipher = ciphers.get(version)
                if cipher is None:
                    cipher = ciphers[version] = await keyring.cipher(tenant_id, version)
                row[field] = cipher.decrypt(table, field, row_id, raw)
            except (DecryptionError, KeyUnavailable, ValueError) as exc:
                raise _unreadable(tenant_id, table, field, row_id, exc) from exc
        out.append(row)
    return out


async def open_row(
    keyring: TenantKeyring, tenant_id: UUID, table: str, row: Mapping[str, Any]
) -> dict[str, Any]:
    return (await open_rows(keyring, tenant_id, table, (row,)))[0]


async def decrypt_values(
    keyring: TenantKeyring, tenant_id: UUID, table: str, row_id: UUID, stored: Mapping[str, Any]
) -> dict[str, str | None]:
    """Plaintext of every sensitive field from a row's ``<field>_enc`` columns."""
    out: dict[str, str | None] = {}
    for field in SENSITIVE[table]:
        blob = stored.get(f"{field}_enc")
        if blob is None:
            out[field] = None
            continue
        if isinstance(blob, str):  # rows that went through a JSON cache carry base64
            blob = base64.b64decode(blob)
        try:
            cipher = await keyring.cipher(tenant_id, key_version_of(bytes(blob)))
            out[field] = cipher.decrypt(table, field, row_id, bytes(blob))
        except (DecryptionError, KeyUnavailable) as exc:
            raise _unreadable(tenant_id, table, field, row_id, exc) from exc
    return out


async def search_indexes(
    keyring: TenantKeyring, tenant_id: UUID, table: str, field: str, value: str
) -> list[bytes]:
    """Blind indexes of ``value`` under every live key version: during a rotation rows
    carry either version's index, and a search must find both."""
    normalized = NORMALIZERS[field](value)
    out = []
    for info in await keyring.versions(tenant_id):
        if info.state == "destroyed":
            continue
        try:
            cipher = await keyring.cipher(tenant_id, info.version)
        except KeyUnavailable:
            # Retired since the version list was read: no row uses it any more.
            continue
        out.append(cipher.blind_index(table, field, normalized))
    return out
