"""The import job: the upload read back record by record and written through the
object's batch flow (``crud.batch.apply``: each row a create, an update or an upsert by
the object's own services, in a savepoint, as its requester), ``import_chunk_rows``
rows per write transaction.

Each chunk's transaction also locks the import's row, checks it is still running and
still where this run left it, appends the chunk's failures to the error report and
commits the progress (the offset and line after the chunk's last record, the counts):
the rows and the progress commit together or not at all. So a worker that stops, or is
killed, mid-import leaves the import at the end of its last committed chunk, and whoever
runs the job next (saq hands it on; the recovery job queues it again) goes on from
there: no row is written twice or skipped. A dry run applies each chunk in a savepoint
it then rolls back, keeping only the progress and the report.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any
from uuid import UUID

import orjson
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from meridian.crud import batch, custom, endpoints
from meridian.crud.batch import BatchCreate, BatchItem, BatchUpdate, BatchUpsert
from meridian.deps import TenantAccess, record_viewer
from meridian.encryption.service import blind_filter
from meridian.errors import PROBLEM_BASE
from meridian.ids import new_id
from meridian.transfers import files, reading, repository, service
from meridian.transfers.exceptions import JobFailed, Superseded
from meridian.transfers.models import DataImport
from meridian.transfers.objects import CUSTOM, CUSTOM_PREFIX, Transferable
from tenancy.keyring import TenantKeyring

REPORT_HEADER = ("row", "line", "column", "field", "type", "detail")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_TRUE = frozenset({"true", "yes", "y", "1"})
_FALSE = frozenset({"false", "no", "n", "0"})

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Problem:
    column: str
    field: str
    type: str
    detail: str


@dataclass
class Outcome:
    """A chunk's counts and the report's lines for its failures."""

    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    report: list[tuple[int, int, Problem]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.created + self.updated + self.skipped + self.failed


# -- from a record to a body ---------------------------------------------------------------
@cache
def _json_types(model: type[BaseModel]) -> dict[str, frozenset[str]]:
    """The JSON types each field of ``model`` takes (from its JSON Schema)."""
    out: dict[str, frozenset[str]] = {}
    for name, prop in model.model_json_schema().get("properties", {}).items():
        found: set[str] = set()
        for branch in [prop, *prop.get("anyOf", []), *prop.get("oneOf", [])]:
            kind = branch.get("type")
            if isinstance(kind, str):
                found.add(kind)
            elif isinstance(kind, list):
                found.update(kind)
            if "enum" in branch or "const" in branch or "$ref" in branch:
                found.add("string")
        out[name] = frozenset(found)
    return out


def _flag(raw: str) -> bool | str:
    text = raw.strip().lower()
    return True if text in _TRUE else False if text in _FALSE else raw


def _list(raw: str) -> Any:
    text = raw.strip()
    if text.startswith("["):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return raw
    return [item.strip() for item in text.split("|") if item.strip()]


class Converter:
    """A record's values → the body its row writes: mapped columns (or keys) to fields,
    CSV text to the values the fields take. An empty cell sets nothing."""

    def __init__(
        self,
        spec: Transferable,
        format_: str,
        mapping: Mapping[str, str] | None,
        fields: Sequence[custom.Field],
        header: Sequence[str] | None,
    ) -> None:
        self.spec = spec
        self.csv = format_ == "csv"
        self.fields = {f.name: f for f in fields}
        importable = set(spec.importable)
        self._types = {**_json_types(spec.update_model), **_json_types(spec.create_model)}

        def targets(name: str) -> bool:
            if name in importable:
                return True
            return name.startswith(CUSTOM_PREFIX) and name[len(CUSTOM_PREFIX) :] in self.fields

        self.mapping: dict[str, str]
        if mapping is not None:
            self.mapping = dict(mapping)
        elif header is not None:
            self.mapping = {h: h for h in header if targets(h)}
        else:  # JSON Lines by name: its own keys, and its `custom` object
            self.mapping = {}
        self.by_name = mapping is None and not self.csv
        self._targets = targets
        self.columns: dict[str, int] = {}
        self.width = 0
        if self.csv:
            header = list(header or ())
            missing = [c for c in self.mapping if c not in header]
            if missing:
                raise JobFailed(
                    f"The mapping names columns the file's header does not have: "
                    f"{', '.join(repr(c) for c in missing)}."
                )
            twice = sorted({c for c in self.mapping if header.count(c) > 1})
            if twice:
                raise JobFailed(f"The header has these columns more than once: {twice}.")
            self.columns = {c: header.index(c) for c in self.mapping}
            self.width = len(header)
        self.column_of = {target: source for source, target in self.mapping.items()}

    def body(self, values: list[str] | dict[str, Any]) -> Row:
        body: Row = {}
        extra: Row = {}
        pairs: list[tuple[str, Any]]
        if isinstance(values, list):
            pairs = [
                (t, values[self.columns[s]])
                for s, t in self.mapping.items()
                if self.columns[s] < len(values)
            ]
            pairs = [(t, self._cell(t, v)) for t, v in pairs if v.strip()]
        elif self.by_name:
            pairs = [(k, v) for k, v in values.items() if k == CUSTOM or self._targets(k)]
        else:
            pairs = [(t, values[s]) for s, t in self.mapping.items() if s in values]
        for target, value in pairs:
            if target.startswith(CUSTOM_PREFIX):
                extra[target[len(CUSTOM_PREFIX) :]] = value
            else:
                body[target] = value
        if extra:
            given = body.get(CUSTOM)
            body[CUSTOM] = {**given, **extra} if isinstance(given, dict) else extra
        return body

    def _cell(self, target: str, raw: str) -> Any:
        if target.startswith(CUSTOM_PREFIX):
            kind = self.fields[target[len(CUSTOM_PREFIX) :]].type
            if kind == "number" and _INTEGER.match(raw.strip()):
                return int(raw)
            if kind == "boolean":
                return _flag(raw)
            if kind == "multi_picklist":
                return _list(raw)
            return raw
        types = self._types.get(target, frozenset())
        if not types or "string" in types:
            return raw
        if "boolean" in types:
            return _flag(raw)
        if "integer" in types and _INTEGER.match(raw.strip()):
            return int(raw)
        if types & {"array", "object"}:
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError:
                return raw
        return raw

    def problems(self, problem: Mapping[str, Any]) -> list[Problem]:
        """A row's problem (RFC 9457, as the batch flow reports it) as report lines."""
        slug = str(problem.get("type", "")).removeprefix(PROBLEM_BASE)
        errors = problem.get("errors") or []
        if not errors:
            detail = str(problem.get("detail") or problem.get("title") or "")
            if problem.get("duplicate_of"):
                detail += f" (duplicate of {problem['duplicate_of']})"
            return [Problem("", "", slug, detail)]
        out = []
        for error in errors:
            loc = [str(p) for p in error.get("loc", ())]
            name = ".".join(loc)
            if loc[:1] == [CUSTOM] and len(loc) > 1:
                name = f"{CUSTOM_PREFIX}{loc[1]}"
            column = self.column_of.get(name) or self.column_of.get(loc[0] if loc else "", "")
            if self.by_name and not column:
                column = name
            out.append(Problem(column, name, str(error.get("type", slug)), str(error.get("msg"))))
        return out


# -- one chunk -------------------------------------------------------------------------------
@dataclass
class Chunk:
    records: list[reading.Record]
    start: int  # the offset it starts at (the import's committed next_offset)

    @property
    def end(self) -> int:
        return self.records[-1].end

    @property
    def next_line(self) -> int:
        return self.records[-1].next_line


class Importer:
    """One run of an import job (``worker.transfer_import``)."""

    def __init__(
        self,
        access: TenantAccess,
        keyring: TenantKeyring,
        spec: Transferable,
        row: Row,
        *,
        chunk_rows: int,
        retention_days: int,
        touch: Callable[[], Awaitable[None]],
    ) -> None:
        self.access = access
        self.keyring = keyring
        self.spec = spec
        self.row = row
        self.tenant_id = access.tenant.tenant_id
        self.import_id: UUID = row["id"]
        self.options: Mapping[str, Any] = row["options"]
        self.chunk_rows = chunk_rows
        self.retention_days = retention_days
        self.touch = touch
        self.writes = spec.writes(access.tenant, keyring, bool(self.options["allow_duplicate"]))
        self.report: files.FileWriter | None = None

    # -- the file -------------------------------------------------------------------------
    async def _lines(self, upload: Row, offset: int, line: int) -> reading.Lines:
        tenant_id, file_id = self.tenant_id, upload["id"]
        cipher = await self.keyring.cipher(tenant_id, upload["key_version"])
        first = await endpoints.read(
            self.access, lambda conn: repository.chunk_at(conn, tenant_id, file_id, offset)
        )

        async def read(seq: int) -> tuple[int, bytes] | None:
            return await endpoints.read(
                self.access, lambda conn: repository.read_chunk(conn, tenant_id, file_id, seq)
            )

        aead = files.file_cipher(cipher, file_id)
        chunks = files.chunks_of(aead, tenant_id, file_id, upload["chunks"], read, first=first)
        return reading.Lines(chunks, offset, line)

    async def _start(self) -> None:
        """Running (a later run: still running, one more attempt)."""
        async with self.access.write() as session:
            row = await repository.lock_job(session, DataImport, self.tenant_id, self.import_id)
            if row is None or row["state"] not in ("queued", "running"):
                raise Superseded(f"the import is {row['state'] if row else 'gone'}")
            changes: dict[str, Any] = {"attempts": row["attempts"] + 1}
            if row["state"] == "queued":
                changes |= {"state": "running", "started_at": datetime.now(UTC)}
            self.row = await repository.update_job(
                session, DataImport, self.tenant_id, self.import_id, **changes
            )
            await repository.heartbeat(session, self.tenant_id, self.import_id)

    async def run(self) -> str:
        await self._start()
        tenant_id = self.tenant_id
        upload = await endpoints.read(
            self.access,
            lambda conn: repository.read_file(conn, tenant_id, self.row["upload_file_id"]),
        )
        if upload is None or not upload["complete"]:
            raise JobFailed("The upload is no longer kept.")
        header: list[str] | None = None
        if self.row["format"] == "csv":
            first = reading.Records(await self._lines(upload, 0, 1), "csv", 0)
            record = await first.next()
            if record is None or record.values is None:
                raise JobFailed("The file has no header row (CSV files start with one).")
            assert isinstance(record.values, list)
            header = [h.strip() for h in record.values]
            start, line = (
                max(self.row["next_offset"], record.end),
                max(self.row["next_line"], record.next_line),
            )
        else:
            start, line = self.row["next_offset"], self.row["next_line"]
        fields = await endpoints.read(
            self.access, lambda conn: custom.fields_read(conn, tenant_id, self.spec.kind)
        )
        mapping: Mapping[str, str] | None = self.options.get("mapping")
        active = {f"{CUSTOM_PREFIX}{f.name}" for f in fields}
        gone = sorted(
            t for t in (mapping or {}).values() if t.startswith(CUSTOM_PREFIX) and t not in active
        )
        if gone:
            raise JobFailed(f"The mapping names custom fields that are no longer active: {gone}.")
        converter = Converter(self.spec, self.row["format"], mapping, fields, header)
        records = reading.Records(
            await self._lines(upload, start, line), self.row["format"], self.row["rows_done"]
        )
        offset = self.row["next_offset"]
        while True:
            taken: list[reading.Record] = []
            while len(taken) < self.chunk_rows:
                record = await records.next()
                if record is None:
                    break
                taken.append(record)
            if not taken:
                return await self._finish(offset)
            offset = await self._chunk(Chunk(taken, offset), converter)
            await self.touch()

    # -- a chunk's transaction ------------------------------------------------------------
    async def _chunk(self, chunk: Chunk, converter: Converter) -> int:
        tenant_id = self.tenant_id
        async with endpoints.writing(self.access, self.spec.kind) as session:
            row = await self._locked(session, chunk.start)
            # Every statement planned with its values: a generic plan cached on the
            # pooled connection while the tenant's tables were small (a sequential
            # scan) stayed as they grew, and each row's duplicate check read them all.
            await session.execute(text(endpoints.CUSTOM_PLANS))
            if self.options["dry_run"]:
                outcome = await _rolled_back(
                    session, lambda: self._apply(session, chunk, converter)
                )
            else:
                outcome = await self._apply(session, chunk, converter)
            report_id = row["report_file_id"]
            if outcome.report:
                report_id = await self._report(session, row, outcome.report)
            self.row = await repository.update_job(
                session,
                DataImport,
                tenant_id,
                self.import_id,
                next_offset=chunk.end,
                next_line=chunk.next_line,
                rows_done=row["rows_done"] + outcome.rows,
                created=row["created"] + outcome.created,
                updated=row["updated"] + outcome.updated,
                skipped=row["skipped"] + outcome.skipped,
                failed=row["failed"] + outcome.failed,
                report_file_id=report_id,
            )
            await repository.heartbeat(session, tenant_id, self.import_id)
        return chunk.end

    async def _locked(self, session: AsyncSession, offset: int) -> Row:
        row = await repository.lock_job(session, DataImport, self.tenant_id, self.import_id)
        if row is None or row["state"] != "running":
            raise Superseded(f"the import is {row['state'] if row else 'gone'}")
        if row["next_offset"] != offset:
            raise Superseded("another run of the import went on")
        return row

    async def _apply(self, session: AsyncSession, chunk: Chunk, converter: Converter) -> Outcome:
        outcome = Outcome()
        plain_creates = self.options["on_match"] == "create"
        pending: list[tuple[reading.Record, BatchItem]] = []
        for record in chunk.records:
            if record.values is None:
                self._failed(
                    outcome, record, [Problem("", "", "unreadable", f"the row {record.problem}")]
                )
                continue
            if isinstance(record.values, list) and len(record.values) > converter.width:
                detail = f"the row has {len(record.values)} values, the header {converter.width}"
                self._failed(outcome, record, [Problem("", "", "unreadable", detail)])
                continue
            body = converter.body(record.values)
            if plain_creates:
                pending.append((record, BatchCreate.model_construct(op="create", body=body)))
                continue
            item = await self._matched(session, body)
            if item is None:
                outcome.skipped += 1
                continue
            if isinstance(item, Problem):
                self._failed(outcome, record, [item])
                continue
            self._count(outcome, record, converter, await self._write(session, [item]))
        if pending:
            results = await self._write_all(session, [item for _, item in pending])
            for (record, _), result in zip(pending, results, strict=True):
                self._count(outcome, record, converter, [result])
        return outcome

    async def _write(self, session: AsyncSession, items: list[BatchItem]) -> list[Row]:
        return await batch.apply(session, self.access, self.writes, items)

    async def _write_all(self, session: AsyncSession, items: list[BatchItem]) -> list[Row]:
        """The chunk's creates: first all at once, without a savepoint per row (four
        statements fewer a row); if one fails, rolled back and written again row by row,
        each in its savepoint, so that only the failing rows fail."""
        try:
            return await _rolled_back_on(
                batch.Aborted,
                session,
                lambda: batch.apply(session, self.access, self.writes, items, atomic=True),
            )
        except batch.Aborted:
            return await self._write(session, items)

    def _count(
        self, outcome: Outcome, record: reading.Record, converter: Converter, results: list[Row]
    ) -> None:
        (result,) = results
        status = result["status"]
        if status == 201:
            outcome.created += 1
        elif status == 200:
            outcome.updated += 1
        else:
            self._failed(outcome, record, converter.problems(result.get("problem") or {}))

    def _failed(self, outcome: Outcome, record: reading.Record, problems: list[Problem]) -> None:
        outcome.failed += 1
        outcome.report += [(record.row, record.line, p) for p in problems]

    async def _matched(self, session: AsyncSession, body: Row) -> BatchItem | Problem | None:
        """What a row that may match a record does: the item (a create when nothing
        matches, else an update or an upsert), None when it is skipped."""
        by, on_match = self.options["match_by"], self.options["on_match"]
        value = body.get(by)
        create = BatchCreate.model_construct(op="create", body=body)
        if not isinstance(value, str) or not value.strip():
            return create  # nothing to match by
        repo = self.spec.repository
        if by == "external_id":
            if on_match == "update":
                try:
                    return BatchUpsert.model_validate(
                        {"op": "upsert", "external_id": value, "body": body}
                    )
                except ValueError:
                    return create  # an external id of no valid form: the create says why
            found = await repo(session, self.access.tenant).find_external(value)
        else:
            criterion, _ = await blind_filter(
                self.keyring,
                self.tenant_id,
                repo.model.__tablename__,
                by,
                repo.attr(f"{by}_bidx"),
                value,
            )
            found = await repository.match_by_index(session, repo, self.tenant_id, criterion)
        if found is None:
            return create
        if on_match == "skip":
            return None
        viewer = record_viewer(self.access)
        if repo.is_scoped_for(viewer):
            scoped = repo(session, self.access.tenant, viewer=viewer)
            if not await scoped.lock_visible(found, for_update=True):
                # Never changed, never duplicated, as a batch's upsert: taken by a record
                # the requester cannot see.
                detail = f"a {self.spec.kind} with this {by} exists (duplicate of {found})"
                return Problem("", by, "duplicate", detail)
        return BatchUpdate.model_construct(op="update", id=found, if_match=None, body=body)

    # -- the report -----------------------------------------------------------------------
    async def _report(
        self, session: AsyncSession, row: Row, lines: list[tuple[int, int, Problem]]
    ) -> UUID:
        """Appends ``lines`` to the error report (made with the first failure)."""
        tenant_id = self.tenant_id
        text = io.StringIO()
        out = csv.writer(text, lineterminator="\n")
        report_id: UUID | None = row["report_file_id"]
        if report_id is None:
            report_id = new_id()
            cipher = await self.keyring.active_cipher(tenant_id)
            await repository.insert_file(
                session,
                tenant_id,
                report_id,
                purpose="report",
                media_type=service.MEDIA_TYPES["csv"],
                key_version=cipher.version,
                expires_at=service.expiry(self.retention_days),
            )
            self.report = files.FileWriter(
                files.file_cipher(cipher, report_id), tenant_id, report_id
            )
            out.writerow(REPORT_HEADER)
        elif self.report is None or self.report.file_id != report_id:
            # A run that resumes: the report goes on after what is committed.
            found = await repository.read_file_in(session, tenant_id, report_id)
            cipher = await self.keyring.cipher(tenant_id, found["key_version"])
            self.report = files.FileWriter(
                files.file_cipher(cipher, report_id),
                tenant_id,
                report_id,
                seq=found["chunks"],
                offset=found["raw_bytes"],
            )
        for number, line, problem in sorted(lines, key=lambda entry: entry[0]):
            out.writerow(
                (number, line, problem.column, problem.field, problem.type, problem.detail)
            )
        writer = self.report
        await writer.add(text.getvalue().encode())
        await repository.insert_chunks(session, tenant_id, report_id, await writer.close())
        return report_id

    # -- the end --------------------------------------------------------------------------
    async def _finish(self, offset: int) -> str:
        async with endpoints.writing(self.access, self.spec.kind) as session:
            row = await self._locked(session, offset)
            await close(session, row, "done", None, retention_days=self.retention_days)
        return "done"


async def close(
    session: AsyncSession, row: Row, state: str, error: str | None, *, retention_days: int
) -> Row:
    """Ends the import ``row`` (locked): its state, its report kept for the retention,
    its upload deleted, the event."""
    tenant_id = row["tenant_id"]
    expires = service.expiry(retention_days)
    if row["report_file_id"] is not None:
        await repository.complete_file(session, tenant_id, row["report_file_id"], expires)
    await repository.delete_file(session, tenant_id, row["upload_file_id"])
    await repository.finished(session, tenant_id, row["id"])
    if row["state"] == state:  # cancelled meanwhile: its event is made
        return row
    done = await repository.update_job(
        session,
        DataImport,
        tenant_id,
        row["id"],
        state=state,
        error=error,
        finished_at=datetime.now(UTC),
        expires_at=expires,
    )
    action = "completed" if state == "done" else state
    service.emit(
        session,
        tenant_id,
        service.IMPORT,
        action,
        done,
        service.Requester.of(done),
        **service.counts(done),
        **({"error": error} if error else {}),
    )
    return done


async def _rolled_back_on(
    error: type[Exception], session: AsyncSession, work: Callable[[], Awaitable[list[Row]]]
) -> list[Row]:
    """``work`` in a savepoint, rolled back (with what the session noted meanwhile) if it
    raises ``error``, which is raised again."""
    kept = {
        key: value.copy() if isinstance(value, list | set | dict) else value
        for key, value in session.info.items()
    }
    savepoint = await session.begin_nested()
    try:
        done = await work()
    except error:
        await savepoint.rollback()
        session.info.clear()
        session.info.update(kept)
        raise
    await savepoint.commit()
    return done


async def _rolled_back(session: AsyncSession, work: Callable[[], Awaitable[Outcome]]) -> Outcome:
    """``work`` in a savepoint rolled back afterwards (a dry run): what it wrote, the
    events it queued and the records it noted for the caches are all forgotten."""
    kept = {
        key: value.copy() if isinstance(value, list | set | dict) else value
        for key, value in session.info.items()
    }
    savepoint = await session.begin_nested()
    try:
        return await work()
    finally:
        await savepoint.rollback()
        session.info.clear()
        session.info.update(kept)
