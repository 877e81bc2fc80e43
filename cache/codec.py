"""How values travel through the cache: a codec per value type, and the L2 envelope.

Never pickle: a cache poisoned by anyone who can write to Redis must not become code
execution. The envelope carries what XFetch needs (how long the load took, when the value
expires) and whether the value is a cached "not found".
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson

T = TypeVar("T")

_HEADER = struct.Struct("<Bdd")  # flags, load duration (s), expiry (unix s)
_NEGATIVE = 0x01


@dataclass(frozen=True, slots=True)
class Codec(Generic[T]):
    encode: Callable[[T], bytes]
    decode: Callable[[bytes], T]


def _identity(value: bytes) -> bytes:
    return value


BYTES: Codec[bytes] = Codec(_identity, _identity)
JSON: Codec[Any] = Codec(orjson.dumps, orjson.loads)


@dataclass(frozen=True, slots=True)
class Envelope:
    payload: bytes | None  # None: the source said "not found"
    delta: float
    expiry: float

    def pack(self) -> bytes:
        flags = _NEGATIVE if self.payload is None else 0
        return _HEADER.pack(flags, self.delta, self.expiry) + (self.payload or b"")

    @classmethod
    def unpack(cls, raw: bytes) -> Envelope:
        if len(raw) < _HEADER.size:
            raise ValueError("cache envelope too short")
        flags, delta, expiry = _HEADER.unpack_from(raw)
        payload = None if flags & _NEGATIVE else raw[_HEADER.size :]
        return cls(payload, delta, expiry)
