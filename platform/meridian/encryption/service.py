"""Writes and searches of sensitive fields: what repositories store instead of plaintext.

Every write of a sensitive field re-encrypts all of the row's sensitive fields under the
tenant's active key version, so a row's ciphertexts always share ``enc_version`` (the
re-encryption job and key retirement rely on it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from sqlalchemy import ColumnElement, LargeBinary, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import InstrumentedAttribute

from meridian.encryption.fields import SENSITIVE, encrypt_values, open_row, search_indexes
from tenancy.keyring import TenantKeyring

_BIDX_ARRAY = ARRAY(LargeBinary)


def _storage(cipher_values: dict[str, Any], table: str) -> dict[str, Any]:
    if all(cipher_values[f"{f}_enc"] is None for f in SENSITIVE[table]):
        cipher_values["enc_version"] = None  # nothing encrypted: no key version to name
    return cipher_values


async def for_insert(
    keyring: TenantKeyring, tenant_id: UUID, table: str, row_id: UUID, values: Mapping[str, Any]
) -> dict[str, Any]:
    """``values`` with the sensitive fields replaced by their storage columns. ``row_id``
    must be the id the row is inserted with: the ciphertexts' associated data names it."""
    out = {k: v for k, v in values.items() if k not in SENSITIVE[table]}
    plain = {f: values.get(f) for f in SENSITIVE[table]}
    if all(v is None for v in plain.values()):
        return {**out, **dict.fromkeys(_columns(table))}
    cipher = await keyring.active_cipher(tenant_id)
    return {**out, **_storage(encrypt_values(cipher, table, row_id, plain), table)}


async def for_update(
    keyring: TenantKeyring,
    tenant_id: UUID,
    table: str,
    row_id: UUID,
    changes: Mapping[str, Any],
    stored: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """``changes`` with its sensitive fields replaced by storage columns for all of the
    row's sensitive fields (those not changed are decrypted from ``stored``, the row's
    current ``<field>_enc`` columns, and encrypted again under the active version)."""
    if not any(f in changes for f in SENSITIVE[table]):
        return dict(changes)
    assert stored is not None
    current = await open_row(keyring, tenant_id, table, {"id": row_id, **stored}, reveal=True)
    plain = {f: changes[f] if f in changes else current[f] for f in SENSITIVE[table]}
    out = {k: v for k, v in changes.items() if k not in SENSITIVE[table]}
    if all(v is None for v in plain.values()):
        return {**out, **dict.fromkeys(_columns(table))}
    cipher = await keyring.active_cipher(tenant_id)
    return {**out, **_storage(encrypt_values(cipher, table, row_id, plain), table)}


def touches_sensitive(table: str, changes: Mapping[str, Any]) -> bool:
    return any(f in changes for f in SENSITIVE.get(table, ()))


def _columns(table: str) -> list[str]:
    return [f"{f}_{s}" for f in SENSITIVE[table] for s in ("enc", "bidx")] + ["enc_version"]


async def blind_filter(
    keyring: TenantKeyring,
    tenant_id: UUID,
    table: str,
    field: str,
    column: InstrumentedAttribute[Any],
    value: str,
    *,
    normalized: bool = False,
) -> tuple[ColumnElement[bool], str]:
    """``column = ANY(<blind indexes of value under every live key version>)`` (one
    index probe per version, no decryption), and a token naming the search for cursors
    and cache keys without the plaintext: the index under the oldest live version."""
    indexes = await search_indexes(keyring, tenant_id, table, field, value, normalized=normalized)
    criterion = column == bindparam(None, indexes, type_=_BIDX_ARRAY).any_()
    token = indexes[0].hex() if indexes else "none"
    return criterion, token
