"""Files as sealed, compressed chunks on the tenant's shard, and the signatures of the
URLs that download them.

A file is written as it is produced (an upload as it arrives, an export page by page):
every ``CHUNK_BYTES`` of it are compressed (zlib) and sealed with AES-GCM under a key
of the file's own, derived from the tenant's data key (an HMAC-SHA256 of the file's id
under a subkey of it: ``FieldCipher.blind_index``, a PRF, used as a KDF here). The
associated data names the tenant, the file, the chunk and its offset, so a chunk copied
elsewhere does not open. Nothing of a file is in clear on the shard, as for sealed
fields, and destroying the tenant's keys (crypto-shredding) destroys its files too.
Memory stays bounded whatever a file's size: one chunk at a time, written or read.

Download URLs are signed with another key derived from the same data key: a URL signed
for one tenant never verifies for another (nor for another file of the same tenant, nor
after it expires), no secret is added to the platform's settings, and the key rotates
and is shredded with the tenant's. The signature names the key version it used.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import os
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tenancy.crypto import FieldCipher
from tenancy.keyring import KeyUnavailable, TenantKeyring

CHUNK_BYTES = 1 << 20
# zlib's level 3: most of level 6's ratio on CSV and JSON at about half its CPU.
COMPRESSION = 3
_TABLE = "data_file"
_NONCE = 12
_AAD = struct.Struct(">16s16sIQ")  # tenant, file, chunk, offset
SIGNATURE_PATTERN = r"^[0-9]{1,10}\.[A-Za-z0-9_-]{22}$"


class FileUnreadable(Exception):
    """A chunk that does not open: its key is gone (destroyed), or it was tampered with."""


@dataclass(frozen=True, slots=True)
class Chunk:
    seq: int
    raw_offset: int
    raw_size: int
    data: bytes  # sealed


def file_cipher(cipher: FieldCipher, file_id: UUID) -> AESGCM:
    """The file's own key (AES-128-GCM), derived from the tenant's data key."""
    return AESGCM(cipher.blind_index(_TABLE, "content", str(file_id)))


def _aad(tenant_id: UUID, file_id: UUID, seq: int, offset: int) -> bytes:
    return b"meridian-data-file-v1" + _AAD.pack(tenant_id.bytes, file_id.bytes, seq, offset)


def seal(aead: AESGCM, tenant_id: UUID, file_id: UUID, seq: int, offset: int, raw: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    packed = zlib.compress(raw, COMPRESSION)
    return nonce + aead.encrypt(nonce, packed, _aad(tenant_id, file_id, seq, offset))


def unseal(
    aead: AESGCM, tenant_id: UUID, file_id: UUID, seq: int, offset: int, data: bytes
) -> bytes:
    try:
        packed = aead.decrypt(data[:_NONCE], data[_NONCE:], _aad(tenant_id, file_id, seq, offset))
    except InvalidTag as exc:
        raise FileUnreadable(f"chunk {seq} of file {file_id} does not authenticate") from exc
    return zlib.decompress(packed)


class FileWriter:
    """Bytes in, sealed chunks out: ``add`` returns the chunks that filled up, ``close``
    the last one (if any bytes are left). Sealing runs in a thread (zlib and AES-GCM
    release the GIL), off the event loop."""

    def __init__(
        self, aead: AESGCM, tenant_id: UUID, file_id: UUID, *, seq: int = 0, offset: int = 0
    ) -> None:
        self._aead = aead
        self._tenant_id = tenant_id
        self.file_id = file_id
        self.seq = seq  # the next chunk's
        self.offset = offset  # where the next chunk starts
        self._pending = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._pending)

    async def add(self, data: bytes) -> list[Chunk]:
        self._pending += data
        out = []
        while len(self._pending) >= CHUNK_BYTES:
            raw = bytes(self._pending[:CHUNK_BYTES])
            del self._pending[:CHUNK_BYTES]
            out.append(await self._chunk(raw))
        return out

    async def close(self) -> list[Chunk]:
        if not self._pending:
            return []
        raw = bytes(self._pending)
        self._pending.clear()
        return [await self._chunk(raw)]

    async def _chunk(self, raw: bytes) -> Chunk:
        seq, offset = self.seq, self.offset
        data = await asyncio.to_thread(
            seal, self._aead, self._tenant_id, self.file_id, seq, offset, raw
        )
        self.seq += 1
        self.offset += len(raw)
        return Chunk(seq, offset, len(raw), data)


# (raw_offset, data) of a file's chunk ``seq``, or None when it is not there.
ChunkReader = Callable[[int], Awaitable[tuple[int, bytes] | None]]


async def chunks_of(
    aead: AESGCM, tenant_id: UUID, file_id: UUID, count: int, read: ChunkReader, *, first: int = 0
) -> AsyncIterator[tuple[int, bytes]]:
    """The file's chunks from ``first`` on, opened: (offset, bytes), one at a time."""
    for seq in range(first, count):
        found = await read(seq)
        if found is None:
            raise FileUnreadable(f"chunk {seq} of file {file_id} is missing")
        offset, data = found
        raw = await asyncio.to_thread(unseal, aead, tenant_id, file_id, seq, offset, data)
        yield offset, raw


# -- signed URLs -----------------------------------------------------------------------
def _message(purpose: str, tenant_id: UUID, record_id: UUID, expires: int) -> str:
    return f"{purpose}|{tenant_id}|{record_id}|{expires}"


def sign(cipher: FieldCipher, purpose: str, tenant_id: UUID, record_id: UUID, expires: int) -> str:
    """``<key version>.<MAC>``: 128 bits of HMAC-SHA256 over what the URL names."""
    mac = cipher.blind_index(_TABLE, "url", _message(purpose, tenant_id, record_id, expires))
    return f"{cipher.version}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


async def verify(
    keyring: TenantKeyring,
    purpose: str,
    tenant_id: UUID,
    record_id: UUID,
    expires: int,
    signature: str,
) -> bool:
    """Whether ``signature`` is the tenant's for exactly these values (expired or not)."""
    version_text, _, mac_text = signature.partition(".")
    try:
        version = int(version_text)
        cipher = await keyring.cipher(tenant_id, version)
    except (ValueError, KeyUnavailable):
        return False
    expected = sign(cipher, purpose, tenant_id, record_id, expires)
    return hmac.compare_digest(expected, f"{version}.{mac_text}")
