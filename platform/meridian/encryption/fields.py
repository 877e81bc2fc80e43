"""Encrypting and decrypting the sensitive fields of a row.

The set of sensitive fields is declared here, once per table. On the shard a field
``x`` is stored as ``x_enc`` (AES-256-GCM, see tenancy.crypto) and ``x_bidx`` (its blind
index, for equality search); the row's ``enc_version`` names the data-key version of all
its ciphertexts, which the re-encryption job uses to find rows still on old keys.

A tenant's own custom field marked sensitive is sealed too, under the column name
``custom.<name>`` (names are a field's for good): its value in the record's ``custom``
is ``{"sealed": <base64 ciphertext of the value's JSON>}`` (no field type's value is an
object, so a sealed value is told apart without the field's definition), and its blind
index and key version are in the field's ``custom_value`` row (``crud.custom``).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

import orjson

from authz.fields import MASKED
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


SEALED_KEY = "sealed"


def custom_column(name: str) -> str:
    """The column a sensitive custom field is sealed as (its key derivation and the
    associated data of its ciphertexts)."""
    return f"custom.{name}"


def is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and SEALED_KEY in value


def has_sealed(row: Mapping[str, Any]) -> bool:
    """Whether a row's ``custom`` holds a sealed value (a cheap test of the read path)."""
    custom = row.get("custom")
    return isinstance(custom, dict) and any(isinstance(v, dict) for v in custom.values())


def seal_custom(
    cipher: FieldCipher, table: str, row_id: UUID, name: str, value: Any
) -> dict[str, str]:
    """A sensitive custom field's value as the record's ``custom`` stores it."""
    plain = orjson.dumps(value).decode()
    blob = cipher.encrypt(table, custom_column(name), row_id, plain)
    return {SEALED_KEY: base64.b64encode(blob).decode()}


def sealed_blob(value: Mapping[str, Any]) -> bytes:
    """The ciphertext of a sealed custom value (ValueError if it is not one)."""
    text = value.get(SEALED_KEY)
    if not isinstance(text, str):
        raise ValueError("not a sealed value")
    return base64.b64decode(text, validate=True)


async def open_custom(
    keyring: TenantKeyring,
    tenant_id: UUID,
    table: str,
    row_id: UUID,
    name: str,
    value: Any,
    ciphers: dict[int, FieldCipher] | None = None,
) -> Any:
    """The plaintext of one sealed custom value of the row ``row_id`` (``ciphers``: the
    ones a page already looked up, by key version)."""
    try:
        raw = sealed_blob(value)
        version = key_version_of(raw)
        cipher = ciphers.get(version) if ciphers is not None else None
        if cipher is None:
            cipher = await keyring.cipher(tenant_id, version)
            if ciphers is not None:
                ciphers[version] = cipher
        return orjson.loads(cipher.decrypt(table, custom_column(name), row_id, raw))
    except (DecryptionError, KeyUnavailable, ValueError) as exc:
        raise _unreadable(tenant_id, table, custom_column(name), row_id, exc) from exc


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
    keyring: TenantKeyring,
    tenant_id: UUID,
    table: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    reveal: bool,
) -> list[dict[str, Any]]:
    """Copies of stored rows (from the database or a cache) with every ``<field>_enc``
    replaced by the field's plaintext; ``enc_version`` is dropped. Sealed custom values
    are opened with ``reveal`` (the caller may read personal data), else masked without
    being decrypted: their type is not known here, so no partial mask is attempted.

    The hot path of every read: ciphers are looked up once per key version and page,
    then each value costs one AES-GCM decryption. Any failure raises FieldUnreadable.
    """
    fields = SENSITIVE.get(table, ())
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
        if has_sealed(row):
            custom = dict(row["custom"])
            for name, value in custom.items():
                if is_sealed(value):
                    custom[name] = (
                        await open_custom(keyring, tenant_id, table, row_id, name, value, ciphers)
                        if reveal
                        else MASKED
                    )
            row["custom"] = custom
        out.append(row)
    return out


async def open_row(
    keyring: TenantKeyring,
    tenant_id: UUID,
    table: str,
    row: Mapping[str, Any],
    *,
    reveal: bool,
) -> dict[str, Any]:
    return (await open_rows(keyring, tenant_id, table, (row,), reveal=reveal))[0]


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
    keyring: TenantKeyring,
    tenant_id: UUID,
    table: str,
    field: str,
    value: str,
    *,
    normalized: bool = False,
) -> list[bytes]:
    """Blind indexes of ``value`` under every live key version: during a rotation rows
    carry either version's index, and a search must find both. ``normalized``: the
    value is given as its index takes it (a custom field's, see crud.custom)."""
    normalized_value = value if normalized else NORMALIZERS[field](value)
    out = []
    for info in await keyring.versions(tenant_id):
        if info.state == "destroyed":
            continue
        try:
            cipher = await keyring.cipher(tenant_id, info.version)
        except KeyUnavailable:
            # Retired since the version list was read: no row uses it any more.
            continue
        out.append(cipher.blind_index(table, field, normalized_value))
    return out
