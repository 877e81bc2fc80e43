"""Reading an upload back as records, from any record's end on: the same records as the
standard library's CSV reader (or one JSON object a line) gives the whole file, however
the file is cut into chunks, quoted line breaks and blank lines included."""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import AsyncIterator

import orjson
from hypothesis import given
from hypothesis import strategies as st

from meridian.transfers.reading import Lines, Record, Records

TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"),
    max_size=12,
)
ROWS = st.lists(st.lists(TEXT, min_size=2, max_size=2), max_size=12)


def _csv(rows: list[list[str]]) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue().encode()


async def _chunks(data: bytes, cuts: list[int]) -> AsyncIterator[tuple[int, bytes]]:
    edges = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, end in itertools.pairwise(edges):
        yield start, data[start:end]


async def _records(data: bytes, cuts: list[int], fmt: str, offset: int = 0) -> list[Record]:
    async def from_offset() -> AsyncIterator[tuple[int, bytes]]:
        async for start, raw in _chunks(data, cuts):
            if start + len(raw) > offset or not raw:
                yield start, raw

    records = Records(Lines(from_offset(), offset, 1), fmt)
    out = []
    while (record := await records.next()) is not None:
        out.append(record)
    return out


@given(rows=ROWS, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6))
async def test_csv_records_are_the_csv_readers_wherever_the_chunks_end(
    rows: list[list[str]], cuts: list[int]
) -> None:
    data = _csv(rows)
    expected = [r for r in csv.reader(io.StringIO(data.decode())) if any(v.strip() for v in r)]
    found = await _records(data, cuts, "csv")
    assert [r.values for r in found] == expected
    assert [r.row for r in found] == list(range(1, len(found) + 1))
    # From the end of any record on: the records after it.
    for i, record in enumerate(found):
        rest = await _records(data, cuts, "csv", record.end)
        assert [r.values for r in rest] == expected[i + 1 :]


async def test_lines_and_problems_are_reported() -> None:
    data = b'\xef\xbb\xbfa,b\n1,"two\nlines"\n\n\xff,3\n4,5'
    found = await _records(data, [3, 9], "csv")
    assert [(r.row, r.line, r.values, r.problem) for r in found] == [
        (1, 1, ["a", "b"], None),
        (2, 2, ["1", "two\nlines"], None),
        (3, 5, None, "is not UTF-8 text"),
        (4, 6, ["4", "5"], None),
    ]
    assert found[-1].end == len(data)
    lines = b'{"a": 1}\n\n[1]\nnope\n{"b": 2}\n'
    found = await _records(lines, [5], "jsonl")
    assert [(r.row, r.line, r.values, r.problem is None) for r in found] == [
        (1, 1, {"a": 1}, True),
        (2, 3, None, False),
        (3, 4, None, False),
        (4, 5, {"b": 2}, True),
    ]
    assert orjson.loads(b"{}") == {}
