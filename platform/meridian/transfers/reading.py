"""An uploaded file read back as records, from any byte offset on: CSV (the standard
library's parser) or JSON Lines, one record at a time, each with its number, the line it
starts on and the offset right after it, which is what an import commits as its
progress and resumes from.

The file comes in chunks (``files.chunks_of``); a CSV record may span lines and chunks
(a quoted field with line breaks). ``csv.reader`` pulls lines synchronously, so it is
fed from a buffer: when the buffer runs dry mid-record, the lines taken for that record
are put back, the next chunk is read, and a new reader starts the record again (a
reader keeps no state between records).
"""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

BOM = b"\xef\xbb\xbf"
# A field may be a long text (a case's description): well beyond csv's 128 KiB default.
csv.field_size_limit(8 << 20)


@dataclass(frozen=True, slots=True)
class Line:
    text: str
    number: int  # 1-based, in the file
    end: int  # the offset right after it
    bad: bool  # not UTF-8 (decoded with replacement characters)


@dataclass(frozen=True, slots=True)
class Record:
    row: int  # 1-based among the data records (a CSV's header is not one)
    line: int  # where it starts
    values: list[str] | dict[str, Any] | None
    problem: str | None  # why it cannot be read (then values is None)
    end: int  # the offset right after it
    next_line: int  # the line after it


class _NeedMore(Exception):
    """The buffer ran dry before the end of the file."""


class Lines:
    """A file's lines from ``offset`` (a line's start) on; ``line`` is its number."""

    def __init__(self, chunks: AsyncIterator[tuple[int, bytes]], offset: int, line: int) -> None:
        self._chunks = chunks
        self._offset = offset  # of the first byte not yet split into lines
        self._skip = -1  # bytes of the first chunk before ``offset`` (-1: not yet known)
        self._line = line
        self._partial = b""
        self.eof = False

    async def more(self) -> list[Line]:
        """The lines of the next chunk (the last ones with the end of the file)."""
        out: list[Line] = []
        while not out and not self.eof:
            try:
                start, raw = await anext(self._chunks)
            except StopAsyncIteration:
                self.eof = True
                if self._partial:
                    out.append(self._line_of(self._partial))
                    self._partial = b""
                return out
            if self._skip < 0:
                self._skip = self._offset - start
                raw = raw[self._skip :]
                if self._offset == 0 and raw.startswith(BOM):
                    raw = raw[len(BOM) :]
                    self._offset += len(BOM)
            data = self._partial + raw
            pieces = data.split(b"\n")
            self._partial = pieces.pop()
            out += [self._line_of(piece + b"\n") for piece in pieces]
        return out

    def _line_of(self, raw: bytes) -> Line:
        bad = False
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text, bad = raw.decode("utf-8", "replace"), True
        self._offset += len(raw)
        line = Line(text, self._line, self._offset, bad)
        self._line += 1
        return line


class Records:
    """The records of a CSV (``csv``) or JSON Lines file, read from ``lines``; ``row``
    is the number of the record before the first one."""

    def __init__(self, lines: Lines, format_: str, row: int = 0) -> None:
        self._lines = lines
        self._csv = format_ == "csv"
        self._row = row
        self._buffer: deque[Line] = deque()
        self._taken: list[Line] = []
        self._reader: Iterator[list[str]] = csv.reader(self._feed())

    def _feed(self) -> Iterator[str]:
        while True:
            if not self._buffer:
                if self._lines.eof:
                    return
                raise _NeedMore
            line = self._buffer.popleft()
            self._taken.append(line)
            yield line.text

    async def _refill(self) -> None:
        self._buffer.extendleft(reversed(self._taken))
        self._taken.clear()
        self._buffer.extend(await self._lines.more())
        self._reader = csv.reader(self._feed())

    async def next(self) -> Record | None:
        """The next record; None at the end of the file. Blank lines (and CSV rows of
        empty cells) are no records."""
        while True:
            if self._csv:
                found = await self._next_csv()
            else:
                found = await self._next_line()
            if found is None:
                return None
            lines, values, problem = found
            if isinstance(values, list) and not any(v.strip() for v in values):
                continue  # nothing but blanks: not a record
            self._row += 1
            first, last = lines[0], lines[-1]
            if problem is None and any(line.bad for line in lines):
                values, problem = None, "is not UTF-8 text"
            return Record(self._row, first.number, values, problem, last.end, last.number + 1)

    async def _next_csv(self) -> tuple[list[Line], Any, str | None] | None:
        while True:
            try:
                values = next(self._reader)
            except _NeedMore:
                await self._refill()
                continue
            except StopIteration:
                return None
            except csv.Error as exc:
                # The lines it took are that record's; the next starts after them.
                lines = self._taken[:]
                self._taken.clear()
                if not lines:
                    return None
                self._reader = csv.reader(self._feed())
                return lines, None, f"is not valid CSV ({exc})"
            lines = self._taken[:]
            self._taken.clear()
            return lines, values, None

    async def _next_line(self) -> tuple[list[Line], Any, str | None] | None:
        if not self._buffer:
            self._buffer.extend(await self._lines.more())
            if not self._buffer:
                return None
        line = self._buffer.popleft()
        text = line.text.strip()
        if not text:
            return [line], [], None
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return [line], None, f"is not valid JSON ({exc})"
        if not isinstance(value, dict):
            return [line], None, "is not a JSON object"
        return [line], value, None
