"""An import's upload, read as it arrives: ``multipart/form-data`` with an ``options``
part (JSON) and a ``file`` part.

The body is parsed as a stream (python-multipart's push parser) and the file's bytes go
straight into sealed chunks on the tenant's shard (``files.FileWriter``), so an upload
of any size takes one chunk of memory. Options sent first are checked before the file's
first byte (a wrong request is refused before anything is stored); sent after it, once
the file is stored (which is then deleted if they are refused). Why multipart rather
than a raw body: the options (a mapping of columns to fields, the match rule) are
structured, and a form with a JSON part and a file is what HTTP clients (curl ``-F``,
browsers, SDKs) send without help.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from meridian.errors import BadRequest, UnsupportedMediaType, ValidationFailed
from meridian.transfers.files import Chunk, FileWriter

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

OPTIONS = "options"
FILE = "file"
MAX_OPTIONS_BYTES = 1 << 20


def _missing(part: str) -> ValidationFailed:
    return ValidationFailed(
        f"{part}: Field required",
        errors=[{"loc": [part], "msg": "Field required", "type": "missing"}],
    )


def _twice(part: str) -> ValidationFailed:
    return ValidationFailed(
        f"{part}: one {part} part per import.",
        errors=[{"loc": [part], "msg": f"one {part} part per import", "type": "value_error"}],
    )


@dataclass
class Received:
    """What the upload held: the options (raw JSON), and the file's size, digest and
    the media type or name its part gave."""

    options: bytes
    size: int
    sha256: str
    media_type: str | None
    filename: str | None


@dataclass
class _Parts:
    """python-multipart's callbacks (synchronous), queued for the async reader."""

    events: list[tuple[str, Any]] = field(default_factory=list)
    ended: bool = False
    _headers: dict[str, str] = field(default_factory=dict)
    _name: bytearray = field(default_factory=bytearray)
    _value: bytearray = field(default_factory=bytearray)

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._headers.clear,
            "on_header_field": lambda data, start, end: self._name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": lambda: self.events.append(("begin", dict(self._headers))),
            "on_part_data": lambda data, start, end: self.events.append(
                ("data", bytes(data[start:end]))
            ),
            "on_part_end": lambda: self.events.append(("end", None)),
            "on_end": self._end,
        }

    def _header_end(self) -> None:
        self._headers[self._name.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._name.clear()
        self._value.clear()

    def _end(self) -> None:
        self.ended = True

    def drain(self) -> list[tuple[str, Any]]:
        out, self.events = self.events, []
        return out


async def receive(
    request: Request,
    *,
    check_options: Callable[[bytes], Awaitable[None]],
    open_file: Callable[[str | None, str | None], Awaitable[FileWriter]],
    store: Callable[[list[Chunk]], Awaitable[None]],
) -> Received:
    """Reads the request's body: ``check_options`` (raises to refuse the request) once
    the options part is read, ``open_file`` when the file part starts (with its media
    type and file name), ``store`` for each chunk that fills up and the last one."""
    media, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if media != b"multipart/form-data" or not boundary:
        raise UnsupportedMediaType(
            "An import is uploaded as multipart/form-data (an options part, then a file part)."
        )
    parts = _Parts()
    try:
        parser = MultipartParser(boundary, parts.callbacks())
    except ValueError as exc:
        raise BadRequest(f"The multipart boundary is not valid: {exc}") from exc
    current: str | None = None
    options = bytearray()
    checked = False
    writer: FileWriter | None = None
    digest = hashlib.sha256()
    size = 0
    media_type: str | None = None
    filename: str | None = None
    file_done = False
    async for data in request.stream():
        try:
            parser.write(data)
        except MultipartParseError as exc:
            raise BadRequest(f"The body is not valid multipart/form-data: {exc}") from exc
        for kind, value in parts.drain():
            if kind == "begin":
                disposition, attributes = parse_options_header(value.get("content-disposition"))
                current = attributes.get(b"name", b"").decode("utf-8", "replace")
                if disposition != b"form-data" or current not in (OPTIONS, FILE):
                    raise ValidationFailed(
                        f"Unknown part {current!r}: an import takes an options part and a "
                        "file part.",
                        errors=[
                            {"loc": [current], "msg": "Unknown part", "type": "extra_forbidden"}
                        ],
                    )
                if current == OPTIONS and (checked or options):
                    raise _twice(OPTIONS)
                if current == FILE:
                    if writer is not None:
                        raise _twice(FILE)
                    part_type = parse_options_header(value.get("content-type"))[0]
                    media_type = part_type.decode("latin-1") or None
                    raw_name = attributes.get(b"filename")
                    filename = raw_name.decode("utf-8", "replace") if raw_name else None
                    writer = await open_file(media_type, filename)
            elif kind == "data" and current == OPTIONS:
                options += value
                if len(options) > MAX_OPTIONS_BYTES:
                    raise ValidationFailed(
                        f"options: at most {MAX_OPTIONS_BYTES} bytes.",
                        errors=[{"loc": [OPTIONS], "msg": "too long", "type": "too_long"}],
                    )
            elif kind == "data" and current == FILE and writer is not None:
                digest.update(value)
                size += len(value)
                filled = await writer.add(value)
                if filled:
                    await store(filled)
            elif kind == "end":
                if current == OPTIONS and not checked:
                    await check_options(bytes(options))
                    checked = True
                elif current == FILE and writer is not None:
                    file_done = True
                current = None
    if not parts.ended:
        raise BadRequest("The body ended before the multipart message did.")
    if not checked:
        raise _missing(OPTIONS)
    if writer is None or not file_done:
        raise _missing(FILE)
    last = await writer.close()
    if last:
        await store(last)
    return Received(bytes(options), size, digest.hexdigest(), media_type, filename)
