"""The tenant archive file: a gzip-compressed tar of ``manifest.json``, ``keys.json``
and one COPY text file per table, sealed under a key the operator keeps.

- ``manifest.json``: what the archive holds (tenant, source shard and engine, schema
  revisions, per table its columns, rows, the SHA-256 of its file and the server's row
  hash) and an HMAC-SHA256 of all that under the operator key, so neither the
  manifest nor, through its checksums, any file can be changed unnoticed.
- ``keys.json``: every version of the tenant's data key, each sealed with AES-256-GCM
  under the operator key, the archive, tenant and version as associated data. No key
  is ever written in clear; the sealed fields of the rows stay the ciphertexts the
  shard stored, so the archive is as unreadable without the operator key as the shard
  is without the KEK.
- ``control/<table>.copy``, ``shard/<table>.copy``: the rows, in COPY text format.

Reading checks everything (key, MAC, every file's checksum) before handing anything
to the importer, so a tampered or truncated archive is refused with nothing written.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import os
import struct
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from meridian.backups.errors import ArchiveInvalid, BackupError, WrongOperatorKey
from tenancy.keyring import DataKey

FORMAT = "meridian-tenant-archive"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KEYS = "keys.json"
PLANES = ("control", "shard")
_FLUSH_BYTES = 1 << 20
_NONCE = 12


# -- the operator key ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OperatorKey:
    """The 32-byte key an archive's data keys and manifest are sealed with; kept by the
    operator (a secrets manager, a vault), never by the platform."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != 32:
            raise BackupError("an operator key is 32 bytes")

    def _derive(self, purpose: str) -> bytes:
        hkdf = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=f"{FORMAT}:{purpose}".encode()
        )
        return hkdf.derive(self.key)

    @property
    def key_id(self) -> str:
        """Names the key without revealing it: an import told another key says so
        before trying anything."""
        return hashlib.sha256(self._derive("id")).hexdigest()[:16]

    def mac(self, payload: bytes) -> str:
        return hmac.new(self._derive("manifest"), payload, hashlib.sha256).hexdigest()

    def seal(self, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        nonce = os.urandom(_NONCE)
        return nonce, AESGCM(self._derive("keys")).encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        return AESGCM(self._derive("keys")).decrypt(nonce, sealed, aad)


def load_operator_key(path: Path) -> OperatorKey:
    """The key in ``path``: 32 raw bytes, or their base64 on one line (``openssl rand
    -base64 32 > tenant-backup.key``)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read the key file {path}: {exc.strerror}") from exc
    if len(raw) == 32:
        return OperatorKey(raw)
    try:
        decoded = base64.b64decode(raw.strip(), validate=True)
    except ValueError:
        decoded = b""
    if len(decoded) != 32:
        raise BackupError(
            f"the key file {path} holds neither 32 bytes nor the base64 of 32 bytes "
            "(make one with: openssl rand -base64 32)"
        )
    return OperatorKey(decoded)


# -- the manifest --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TableEntry:
    plane: str  # control | shard
    name: str
    columns: tuple[str, ...]
    rows: int
    sha256: str  # of the table's file
    # The shard's order-independent hash of the rows (sharding.verify.checksums), which
    # the restored rows must match; None for control tables.
    row_hash: str | None = None

    @property
    def member(self) -> str:
        return f"{self.plane}/{self.name}.copy"

    def as_json(self) -> dict[str, Any]:
        return {
            "plane": self.plane,
            "name": self.name,
            "columns": list(self.columns),
            "rows": self.rows,
            "sha256": self.sha256,
            "row_hash": self.row_hash,
        }


@dataclass(frozen=True, slots=True)
class Manifest:
    archive_id: UUID
    created_at: datetime
    tenant: dict[str, Any]  # id, slug, name, region, plan, status
    source: dict[str, Any]  # shard_id, engine, epoch, shard_revision, control_revision
    tables: tuple[TableEntry, ...]
    keys_sha256: str
    key_id: str

    @property
    def tenant_id(self) -> UUID:
        return UUID(str(self.tenant["id"]))

    def of(self, plane: str) -> list[TableEntry]:
        return [t for t in self.tables if t.plane == plane]

    def body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "archive_id": str(self.archive_id),
            "created_at": self.created_at.isoformat(),
            "tenant": self.tenant,
            "source": self.source,
            "tables": [t.as_json() for t in self.tables],
            "keys": {"file": KEYS, "sha256": self.keys_sha256, "key_id": self.key_id},
        }

    def encode(self, key: OperatorKey) -> bytes:
        body = self.body()
        body["mac"] = key.mac(_canonical(body))
        return json.dumps(body, indent=2).encode()

    @classmethod
    def decode(cls, raw: bytes, key: OperatorKey) -> Manifest:
        try:
            body = json.loads(raw)
            if body.get("format") != FORMAT:
                raise ArchiveInvalid("not a Meridian tenant archive")
            if body.get("format_version") != FORMAT_VERSION:
                raise ArchiveInvalid(
                    f"archive format version {body.get('format_version')}; this platform "
                    f"reads version {FORMAT_VERSION}"
                )
            if body["keys"]["key_id"] != key.key_id:
                raise WrongOperatorKey(
                    f"the archive was sealed under operator key {body['keys']['key_id']}; "
                    f"the key given is {key.key_id}"
                )
            mac = body.pop("mac")
            if not hmac.compare_digest(str(mac), key.mac(_canonical(body))):
                raise ArchiveInvalid("the manifest was altered (its MAC does not match)")
            tables = tuple(
                TableEntry(
                    plane=str(t["plane"]),
                    name=str(t["name"]),
                    columns=tuple(str(c) for c in t["columns"]),
                    rows=int(t["rows"]),
                    sha256=str(t["sha256"]),
                    row_hash=None if t["row_hash"] is None else str(t["row_hash"]),
                )
                for t in body["tables"]
            )
            return cls(
                archive_id=UUID(body["archive_id"]),
                created_at=datetime.fromisoformat(body["created_at"]),
                tenant=dict(body["tenant"]),
                source=dict(body["source"]),
                tables=tables,
                keys_sha256=str(body["keys"]["sha256"]),
                key_id=str(body["keys"]["key_id"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchiveInvalid(f"the manifest is malformed ({exc!r})") from exc


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


# -- the data keys -------------------------------------------------------------------------


def _key_aad(archive_id: UUID, tenant_id: UUID, version: int) -> bytes:
    # A sealed key moved to another archive, tenant or version does not open.
    return b"meridian-archive-key" + archive_id.bytes + tenant_id.bytes + struct.pack(">I", version)


def seal_keys(
    key: OperatorKey, archive_id: UUID, tenant_id: UUID, keys: Sequence[DataKey]
) -> bytes:
    entries = []
    for k in keys:
        entry: dict[str, Any] = {
            "version": k.version,
            "state": k.state,
            "created_at": k.created_at.isoformat(),
            "destroyed_at": k.destroyed_at.isoformat() if k.destroyed_at else None,
            "nonce": None,
            "sealed": None,
        }
        if k.key is not None:
            nonce, sealed = key.seal(k.key, _key_aad(archive_id, tenant_id, k.version))
            entry["nonce"] = base64.b64encode(nonce).decode()
            entry["sealed"] = base64.b64encode(sealed).decode()
        entries.append(entry)
    return json.dumps({"cipher": "AES-256-GCM", "keys": entries}, indent=2).encode()


def open_keys(key: OperatorKey, manifest: Manifest, raw: bytes) -> list[DataKey]:
    try:
        entries = json.loads(raw)["keys"]
        keys: list[DataKey] = []
        for e in entries:
            material = None
            if e["sealed"] is not None:
                aad = _key_aad(manifest.archive_id, manifest.tenant_id, int(e["version"]))
                material = key.open(
                    base64.b64decode(e["nonce"]), base64.b64decode(e["sealed"]), aad
                )
            keys.append(
                DataKey(
                    version=int(e["version"]),
                    state=str(e["state"]),
                    key=material,
                    created_at=datetime.fromisoformat(e["created_at"]),
                    destroyed_at=(
                        datetime.fromisoformat(e["destroyed_at"]) if e["destroyed_at"] else None
                    ),
                )
            )
    except InvalidTag as exc:
        raise WrongOperatorKey("the operator key does not open the archive's data keys") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ArchiveInvalid(f"keys.json is malformed ({exc!r})") from exc
    return keys


# -- writing -------------------------------------------------------------------------------


class Spool:
    """One table's rows as they come from COPY, into a file of the work folder, with
    their SHA-256 (the file is written in a thread, a megabyte at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sha256 = hashlib.sha256()
        self._buffer = bytearray()
        self._file: IO[bytes] | None = None

    async def __aenter__(self) -> Spool:
        self._file = await asyncio.to_thread(self.path.open, "wb")
        return self

    async def write(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self._buffer += chunk
        if len(self._buffer) >= _FLUSH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        assert self._file is not None
        data, self._buffer = bytes(self._buffer), bytearray()
        await asyncio.to_thread(self._file.write, data)

    async def __aexit__(self, *exc: object) -> None:
        assert self._file is not None
        try:
            if self._buffer:
                await self._flush()
        finally:
            await asyncio.to_thread(self._file.close)


def write_archive(
    out: Path,
    manifest: Manifest,
    key: OperatorKey,
    keys_json: bytes,
    files: dict[str, Path],
) -> int:
    """The archive at ``out`` (written beside it, then renamed: a failed export leaves
    no partial archive), readable by its owner only; its size in bytes. ``files``:
    member name → the spooled file. Blocking: run it in a thread."""
    partial = out.with_name(out.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            # The manifest first: a reader knows what to expect before the data.
            for name, data in ((MANIFEST, manifest.encode(key)), (KEYS, keys_json)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o600
                tar.addfile(info, io.BytesIO(data))
            for table in manifest.tables:
                info = tar.gettarinfo(str(files[table.member]), arcname=table.member)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o600
                with files[table.member].open("rb") as f:
                    tar.addfile(info, f)
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out.stat().st_size


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenedArchive:
    """An archive whose every part checked out, its tables' files in the work folder."""

    manifest: Manifest
    keys: list[DataKey]
    files: dict[str, Path]  # member name → file in the work folder


def read_archive(path: Path, key: OperatorKey, workdir: Path) -> OpenedArchive:
    """Checks ``path`` whole (operator key, manifest MAC, every file's SHA-256, no
    member missing or extra) and extracts the tables' files into ``workdir``; raises
    ArchiveInvalid or WrongOperatorKey. Blocking: run it in a thread."""
    if not path.is_file():
        raise ArchiveInvalid(f"no archive {path}")
    manifest: Manifest | None = None
    keys_raw: bytes | None = None
    files: dict[str, Path] = {}
    digests: dict[str, str] = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for n, member in enumerate(tar):
                if not member.isfile():
                    raise ArchiveInvalid(f"unexpected member {member.name!r}")
                source = tar.extractfile(member)
                assert source is not None
                if member.name == MANIFEST:
                    manifest = Manifest.decode(source.read(), key)
                    continue
                if member.name == KEYS:
                    keys_raw = source.read()
                    digests[KEYS] = hashlib.sha256(keys_raw).hexdigest()
                    continue
                if manifest is None:
                    raise ArchiveInvalid(f"{MANIFEST} is not the archive's first member")
                expected = {t.member for t in manifest.tables}
                if member.name not in expected or member.name in files:
                    raise ArchiveInvalid(f"unexpected member {member.name!r}")
                # Extracted under a name of ours: a member's name never becomes a path.
                target = workdir / f"{n:04d}.copy"
                digest = hashlib.sha256()
                with target.open("wb") as sink:
                    while chunk := source.read(_FLUSH_BYTES):
                        digest.update(chunk)
                        sink.write(chunk)
                files[member.name] = target
                digests[member.name] = digest.hexdigest()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveInvalid(f"{path} is not a readable tenant archive ({exc})") from exc
    if manifest is None:
        raise ArchiveInvalid(f"{path} has no {MANIFEST}")
    if keys_raw is None:
        raise ArchiveInvalid(f"{path} has no {KEYS}")
    if digests[KEYS] != manifest.keys_sha256:
        raise ArchiveInvalid(f"{KEYS} was altered (its SHA-256 does not match the manifest)")
    missing = [t.member for t in manifest.tables if t.member not in files]
    if missing:
        raise ArchiveInvalid(f"the archive lacks {', '.join(missing)}")
    altered = [t.member for t in manifest.tables if digests[t.member] != t.sha256]
    if altered:
        raise ArchiveInvalid(
            f"checksum mismatch: {', '.join(altered)} differ from the manifest "
            "(the archive was altered or damaged)"
        )
    return OpenedArchive(manifest, open_keys(key, manifest, keys_raw), files)
