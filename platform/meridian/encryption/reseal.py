"""Sealing a tenant's stored values again: what each kind of sealed value is bound to,
and how one is opened under the keys it was sealed with and sealed under others.

One place knows every sealed value a shard holds, for the two jobs that rewrite them:
key rotation (``encryption.reencrypt``: the same tenant and row, a newer key version)
and a sandbox copy of a tenant archive (``backups.sandbox``: another tenant's keys,
and the row's new id, since a value's associated data names the tenant and the row):

- the built-in sensitive fields (``fields.SENSITIVE``): ``<field>_enc`` and
  ``<field>_bidx`` of the row, and its ``enc_version``;
- sensitive custom values: ``{"sealed": …}`` in a record's ``custom``, and the field's
  ``custom_value`` row (``sealed_value``, ``bidx``, ``unique_value``, ``key_version``);
- an export's filter (``data_export.filter_enc``, bound to the export's id);
- stored files' chunks (``data_file_chunk.data``, under the file's own key, derived
  from the data key and the file's id; ``data_file.key_version``): their sealing is
  ``meridian.transfers.files``' own (a domain, which the kit does not import).

``old`` is always the ciphers a value may have been sealed with, by key version; a
value that does not open raises ``FieldUnreadable`` naming the cell (never written
over: a value nobody can read is not replaced by one that says something else).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import orjson

from meridian.crud.custom import blind_text
from meridian.encryption.fields import (
    SENSITIVE,
    FieldUnreadable,
    custom_column,
    is_sealed,
    seal_custom,
    sealed_blob,
)
from tenancy.crypto import NORMALIZERS, DecryptionError, FieldCipher, key_version_of

Ciphers = Mapping[int, FieldCipher]
# The sensitive custom values' table (their rows are per value and field).
CUSTOM_VALUES = "custom_value"
# An export's filter is sealed as this table and column (meridian.transfers.service).
EXPORT_FILTER = ("data_export", "filter")
FILES = "data_file"
FILE_CHUNKS = "data_file_chunk"


def _open(old: Ciphers, table: str, column: str, row_id: UUID, blob: bytes) -> str:
    try:
        return old[key_version_of(blob)].decrypt(table, column, row_id, blob)
    except (DecryptionError, KeyError) as exc:
        raise FieldUnreadable(table, column, row_id, type(exc).__name__) from exc


def reseal_fields(
    table: str,
    row: Mapping[str, Any],
    old: Ciphers,
    new: FieldCipher,
    new_id: UUID | None = None,
) -> list[bytes | None]:
    """The sensitive fields of one row of ``table`` (``id`` and ``<field>_enc`` as
    stored) under ``new``, for row ``new_id`` (default: the same row): per field its
    ciphertext and blind index, in ``SENSITIVE[table]`` order."""
    out: list[bytes | None] = []
    row_id: UUID = row["id"]
    target = row_id if new_id is None else new_id
    for name in SENSITIVE[table]:
        blob = row[f"{name}_enc"]
        if blob is None:
            out += [None, None]
            continue
        plain = _open(old, table, name, row_id, bytes(blob))
        out.append(new.encrypt(table, name, target, plain))
        out.append(new.blind_index(table, name, NORMALIZERS[name](plain)))
    return out


def reseal_custom_value(
    row: Mapping[str, Any],
    old: Ciphers,
    new: FieldCipher,
    new_record_id: UUID | None = None,
) -> dict[str, Any]:
    """One sealed custom value (``record_id``, ``field_id``, ``sealed_value`` and its
    field's ``object``, ``name``, ``type``, ``is_unique``) under ``new``, for record
    ``new_record_id`` (default: the same): ``sealed`` (base64, as the record's
    ``custom`` and ``custom_value`` hold it), ``bidx`` and ``unique`` (whether
    ``unique_value`` is the blind index)."""
    table, record_id, name = row["object"], row["record_id"], row["name"]
    column = custom_column(name)
    target = record_id if new_record_id is None else new_record_id
    try:
        blob = base64.b64decode(row["sealed_value"])
    except ValueError as exc:
        raise FieldUnreadable(table, column, record_id, type(exc).__name__) from exc
    value = orjson.loads(_open(old, table, column, record_id, blob))
    sealed = seal_custom(new, table, target, name, value)
    return {
        "record_id": target,
        "field_id": row["field_id"],
        "object": table,
        "name": name,
        "sealed": sealed["sealed"],
        "bidx": new.blind_index(table, column, blind_text(row["type"], value)),
        "unique": row["is_unique"],
    }


def reseal_custom(
    table: str,
    custom: Mapping[str, Any],
    row_id: UUID,
    old: Ciphers,
    new: FieldCipher,
    new_id: UUID,
) -> dict[str, Any]:
    """The sealed values of a record's ``custom`` (only those) sealed again under
    ``new`` for row ``new_id``: ``{name: {"sealed": …}}``, to merge into it."""
    out: dict[str, Any] = {}
    for name, value in custom.items():
        if not is_sealed(value):
            continue
        column = custom_column(name)
        try:
            blob = sealed_blob(value)
        except ValueError as exc:
            raise FieldUnreadable(table, column, row_id, type(exc).__name__) from exc
        plain = orjson.loads(_open(old, table, column, row_id, blob))
        out[name] = seal_custom(new, table, new_id, name, plain)
    return out


def reseal_export_filter(
    blob: bytes, export_id: UUID, old: Ciphers, new: FieldCipher, new_id: UUID
) -> bytes:
    """An export's sealed filter under ``new``, for export ``new_id``."""
    plain = _open(old, *EXPORT_FILTER, export_id, blob)
    return new.encrypt(*EXPORT_FILTER, new_id, plain)
