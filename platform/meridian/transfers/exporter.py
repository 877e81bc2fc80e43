"""The export job: the list walked in keyset pages with the kit's own list machinery
(the same filter parser and sort, the requester's record scope in every page's SQL, the
same decryption and, without pii:read, masking as ``GET /v1/{object}`` gives that
requester), written as CSV or JSON Lines into a sealed file on the tenant's shard.

Pages are ``export_page_rows`` records; once a page brings the bytes not yet written to
a chunk's worth, they are sealed and committed in one transaction with the export's
progress (rows, bytes, where the walk goes on). Memory holds at most a chunk and a page,
whatever the list's size; a run that stops is resumed by the next from its last chunk.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncSession

from meridian.crud import custom, endpoints
from meridian.crud.pagination import Cursor, Sort
from meridian.deps import TenantAccess
from meridian.errors import MeridianError
from meridian.ids import new_id
from meridian.transfers import files, repository, service
from meridian.transfers.exceptions import JobFailed, Superseded
from meridian.transfers.models import DataExport
from meridian.transfers.objects import CUSTOM, CUSTOM_PREFIX, Transferable
from meridian.web.responses import dumps
from tenancy.keyring import TenantKeyring

# What a resume cursor is bound to (never handed out: it lives in the export's row).
DIGEST = "export"
Row = dict[str, Any]


def _cell(value: Any) -> str:
    """A JSON value as a CSV cell: text as it is, null empty, lists and objects as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return orjson.dumps(value).decode()


class Formatter:
    """Rows as the API returns them → the file's bytes (its CSV header first)."""

    def __init__(self, format_: str, columns: Sequence[str], fields: Sequence[str] | None) -> None:
        self.csv = format_ == "csv"
        self.columns = list(columns)
        self.fields = list(fields) if fields else None

    def header(self) -> bytes:
        if not self.csv:
            return b""
        return self._csv([self.columns])

    def rows(self, rows: Sequence[Mapping[str, Any]]) -> bytes:
        if self.csv:
            # The values as the API's JSON has them (ids, times, money as text).
            native: list[dict[str, Any]] = orjson.loads(dumps(list(rows)))
            return self._csv([[_cell(self._value(r, c)) for c in self.columns] for r in native])
        if self.fields is None:
            return b"".join(dumps(row) + b"\n" for row in rows)
        return b"".join(dumps(self._projected(row)) + b"\n" for row in rows)

    @staticmethod
    def _value(row: Mapping[str, Any], column: str) -> Any:
        if column.startswith(CUSTOM_PREFIX):
            return (row.get(CUSTOM) or {}).get(column[len(CUSTOM_PREFIX) :])
        return row.get(column)

    def _projected(self, row: Mapping[str, Any]) -> dict[str, Any]:
        assert self.fields is not None
        out: dict[str, Any] = {}
        for name in self.fields:
            if name.startswith(CUSTOM_PREFIX):
                values = row.get(CUSTOM) or {}
                key = name[len(CUSTOM_PREFIX) :]
                out.setdefault(CUSTOM, {})[key] = values.get(key)
            else:
                out[name] = row.get(name)
        return out

    @staticmethod
    def _csv(rows: list[list[Any]]) -> bytes:
        text = io.StringIO()
        csv.writer(text, lineterminator="\r\n").writerows(rows)
        return text.getvalue().encode()


class Exporter:
    """One run of an export job (``worker.transfer_export``)."""

    def __init__(
        self,
        access: TenantAccess,
        keyring: TenantKeyring,
        spec: Transferable,
        row: Row,
        *,
        page_rows: int,
        retention_days: int,
        touch: Callable[[], Awaitable[None]],
    ) -> None:
        self.access = access
        self.keyring = keyring
        self.spec = spec
        self.row = row
        self.tenant_id = access.tenant.tenant_id
        self.export_id: UUID = row["id"]
        self.page_rows = page_rows
        self.retention_days = retention_days
        self.touch = touch

    async def _query(self) -> tuple[list[ColumnElement[bool]], Sort, bool]:
        """The list's criteria and sort, as ``GET /v1/{object}`` has them now."""
        spec, access = self.spec, self.access
        text = await service.open_filter(
            self.keyring, self.tenant_id, self.export_id, self.row["filter_enc"]
        )
        try:
            asked = await endpoints.list_filter(access, spec.repository, text, spec.filterable)
            sort = await endpoints.sorting(
                access, spec.repository, self.row["sort"], spec.sortable, spec.default_sort
            )
            where, _ = await endpoints.criteria(access, spec.repository, [], {}, asked)
        except MeridianError as exc:
            raise JobFailed(f"The export's list cannot be read: {exc.detail or exc.title}") from exc
        return where, sort, asked.elsewhere

    async def _page(
        self,
        where: Sequence[ColumnElement[bool]],
        sort: Sort,
        planned: bool,
        cursor: Cursor | None,
    ) -> list[Row]:
        rows = await endpoints.page_rows(
            self.access, self.spec.repository, where, sort, self.page_rows, cursor, planned=planned
        )
        return [dict(r) for r in rows]

    def _shown(self, rows: list[Row]) -> list[Row]:
        return [dict(endpoints.shown(self.access, self.spec.kind, row)) for row in rows]

    async def run(self) -> str:
        where, sort, planned = await self._query()
        await self._start()
        formatter = Formatter(self.row["format"], self.row["columns"], self.row["fields"])
        writer = await self._writer()
        cursor = (
            Cursor.decode(self.row["resume_at"], sort=sort, digest=DIGEST)
            if self.row["resume_at"]
            else None
        )
        pending = bytearray(formatter.header() if writer.offset == 0 else b"")
        written = 0
        while True:
            rows = await self._page(where, sort, planned, cursor)
            more = len(rows) > self.page_rows
            rows = rows[: self.page_rows]
            if rows:
                last = rows[-1]
                cursor = Cursor(sort.token, sort.value_of(last), last["id"], DIGEST)
                rows = await endpoints.opened_rows(self.access, self.spec.kind, rows)
                pending += formatter.rows(self._shown(rows))
                written += len(rows)
            if len(pending) >= files.CHUNK_BYTES or not more:
                await self._commit(writer, bytes(pending), written, cursor, done=not more)
                pending.clear()
                written = 0
                await self.touch()
            if not more:
                return "done"

    async def _start(self) -> None:
        """Running, with its file and its CSV columns (fixed for every later run)."""
        tenant_id = self.tenant_id
        async with self.access.write() as session:
            row = await repository.lock_job(session, DataExport, tenant_id, self.export_id)
            if row is None or row["state"] not in ("queued", "running"):
                raise Superseded(f"the export is {row['state'] if row else 'gone'}")
            changes: dict[str, Any] = {"attempts": row["attempts"] + 1}
            if row["state"] == "queued":
                changes |= {"state": "running", "started_at": datetime.now(UTC)}
            if row["columns"] is None:
                fields = await custom.fields_of(session, tenant_id, self.spec.kind)
                changes["columns"] = service.columns(self.spec, fields, row["fields"])
            if row["file_id"] is None:
                file_id = new_id()
                cipher = await self.keyring.active_cipher(tenant_id)
                await repository.insert_file(
                    session,
                    tenant_id,
                    file_id,
                    purpose="export",
                    media_type=service.MEDIA_TYPES[row["format"]],
                    key_version=cipher.version,
                    expires_at=service.expiry(self.retention_days),
                )
                changes["file_id"] = file_id
            self.row = await repository.update_job(
                session, DataExport, tenant_id, self.export_id, **changes
            )
            await repository.heartbeat(session, tenant_id, self.export_id)

    async def _writer(self) -> files.FileWriter:
        tenant_id, file_id = self.tenant_id, self.row["file_id"]
        found = await endpoints.read(
            self.access, lambda conn: repository.read_file(conn, tenant_id, file_id)
        )
        if found is None:
            raise JobFailed("The export's file is gone.")
        cipher = await self.keyring.cipher(tenant_id, found["key_version"])
        aead = files.file_cipher(cipher, file_id)
        # Where the last committed chunk ended (the export's own count agrees).
        return files.FileWriter(
            aead, tenant_id, file_id, seq=found["chunks"], offset=found["raw_bytes"]
        )

    async def _commit(
        self,
        writer: files.FileWriter,
        data: bytes,
        rows: int,
        cursor: Cursor | None,
        *,
        done: bool,
    ) -> None:
        tenant_id, file_id = self.tenant_id, writer.file_id
        start = writer.offset
        chunks = [*await writer.add(data), *await writer.close()]
        async with self.access.write() as session:
            row = await repository.lock_job(session, DataExport, tenant_id, self.export_id)
            if row is None or row["state"] != "running" or row["bytes_written"] != start:
                raise Superseded("another run of the export went on")
            await repository.insert_chunks(session, tenant_id, file_id, chunks)
            changes: dict[str, Any] = {
                "rows_written": row["rows_written"] + rows,
                "bytes_written": writer.offset,
                "resume_at": cursor.encode() if cursor is not None else None,
            }
            if done:
                expires = service.expiry(self.retention_days)
                await repository.complete_file(session, tenant_id, file_id, expires)
                changes |= {
                    "state": "done",
                    "finished_at": datetime.now(UTC),
                    "expires_at": expires,
                }
                await repository.finished(session, tenant_id, self.export_id)
            else:
                await repository.heartbeat(session, tenant_id, self.export_id)
            self.row = await repository.update_job(
                session, DataExport, tenant_id, self.export_id, **changes
            )
            if done:
                service.emit(
                    session,
                    tenant_id,
                    service.EXPORT,
                    "completed",
                    self.row,
                    service.Requester.of(self.row),
                    rows=self.row["rows_written"],
                    bytes=self.row["bytes_written"],
                )


async def fail(session: AsyncSession, row: Row, error: str) -> None:
    """Ends the export ``row`` (locked) as failed: its partial file goes."""
    tenant_id = row["tenant_id"]
    if row["file_id"] is not None:
        await repository.delete_file(session, tenant_id, row["file_id"])
    await repository.finished(session, tenant_id, row["id"])
    failed = await repository.update_job(
        session,
        DataExport,
        tenant_id,
        row["id"],
        state="failed",
        error=error,
        finished_at=datetime.now(UTC),
    )
    service.emit(
        session,
        tenant_id,
        service.EXPORT,
        "failed",
        failed,
        service.Requester.of(failed),
        error=error,
    )
