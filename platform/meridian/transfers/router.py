"""Export and import endpoints: HTTP only; the jobs run in the worker.

Who sees a job: the one who asked for it, and whoever sees every record of the tenant
in clear (a role with ``records:read_all`` and ``pii:read``, or a client with
``pii:read``), since a file holds what its requester could read; in both cases only for
objects the caller may read. Anyone else gets 404, as for a record out of scope.

The downloads (``/download``, ``/errors``) take no token: their URL is signed for the
tenant and the job (``meridian.transfers.files``), like a presigned object-store URL,
so a browser or a plain ``curl`` fetches the file. A wrong signature is 403, an expired
one 410.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response, StreamingResponse

from meridian.crud import custom, endpoints, quota
from meridian.crud.http import CursorQuery, IdempotencyKeyHeader, LimitQuery, stored_response
from meridian.crud.idempotency import StoredResponse
from meridian.crud.pagination import Cursor, Sort, check_limit, filters_digest
from meridian.crud.schemas import Page
from meridian.deps import (
    CanCreateExports,
    CanCreateImports,
    CanReadExports,
    CanReadImports,
    CanUpdateImports,
    JobQueue,
    Keyring,
    PlatformSettings,
    SignedTenant,
    SignedTenantDep,
    TenantAccess,
    sees_all_records,
)
from meridian.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    QuotaExceeded,
    ServiceUnavailable,
    ShardUnavailable,
    UnsupportedMediaType,
    ValidationFailed,
    invalid_field,
)
from meridian.ids import new_id
from meridian.transfers import files, jobs, repository, service, uploads
from meridian.transfers.models import DataExport, DataImport
from meridian.transfers.objects import OBJECTS, Transferable
from meridian.transfers.schemas import (
    IMPORT_OPTIONS,
    ExportCreate,
    ExportRead,
    ImportOptions,
    ImportRead,
    import_request_body,
)
from meridian.web.openapi import problems
from meridian.web.problems import validation_failed
from meridian.web.responses import json_response
from tenancy.keyring import KeyUnavailable

router = APIRouter(tags=["imports and exports"])
# The upload route, whose body may be larger than other requests' (web.limits).
UPLOAD_PATTERN = re.compile(r"^/v1/imports/?$")
logger = logging.getLogger("meridian.transfers")
_NEWEST_FIRST = {
    service.EXPORT: Sort("created_at", DataExport.created_at, True),
    service.IMPORT: Sort("created_at", DataImport.created_at, True),
}
ExpiresQuery = Annotated[
    int, Query(ge=0, le=2**53, description="When the link stops working (Unix seconds).")
]
SignatureQuery = Annotated[
    str,
    Query(
        pattern=files.SIGNATURE_PATTERN,
        description="The link's signature (the tenant's key version and a MAC).",
    ),
]
_FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file, streamed.",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}
_SIGNED_PROBLEMS = problems(Forbidden, Gone, ServiceUnavailable, ShardUnavailable)
UPLOAD_TYPES = {
    "text/csv": "csv",
    "application/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
    "application/jsonlines": "jsonl",
}
UPLOAD_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


# -- who asked, who sees ----------------------------------------------------------------
def _requester(access: TenantAccess) -> service.Requester:
    if access.actor.user_id is not None:
        return service.Requester("user", str(access.actor.user_id))
    return service.Requester("client", access.principal.client_id, access.actor.role)


def _sees_every_job(access: TenantAccess) -> bool:
    return sees_all_records(access) and access.can("pii", "read")


def _readable(access: TenantAccess) -> list[str]:
    return [obj for obj in OBJECTS if access.can(obj, "read")]


def _visible(access: TenantAccess, row: Mapping[str, Any]) -> bool:
    if row["object"] not in _readable(access):
        return False
    me = _requester(access)
    mine = row["requested_by_type"] == me.type and row["requested_by_id"] == me.id
    return mine or _sees_every_job(access)


def _visibility(access: TenantAccess, model: repository.Job) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [model.object.in_(_readable(access))]
    if not _sees_every_job(access):
        me = _requester(access)
        where += [model.requested_by_type == me.type, model.requested_by_id == me.id]
    return where


def _link(request: Request, ttl: int) -> service.Link:
    return service.Link(str(request.base_url), ttl)


def _forbidden(access: TenantAccess, obj: str, act: str, why: str) -> Forbidden:
    return Forbidden(
        f"The role '{access.actor.role}' may not {act} {obj}, which {why}.",
        object=obj,
        action=act,
    )


async def _custom_fields(access: TenantAccess, spec: Transferable) -> list[custom.Field]:
    tenant_id = access.tenant.tenant_id
    return await endpoints.read(access, lambda conn: custom.fields_read(conn, tenant_id, spec.kind))


async def _page(
    access: TenantAccess,
    kind: str,
    model: repository.Job,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    size = check_limit(limit)
    sort = _NEWEST_FIRST[kind]
    tenant_id = access.tenant.tenant_id
    digest = filters_digest(tenant_id, {"list": kind})
    after = Cursor.decode(cursor, sort=sort, digest=digest) if cursor else None
    where = _visibility(access, model)
    rows = await endpoints.read(
        access,
        lambda conn: repository.list_jobs(
            conn, model, tenant_id, where=where, sort=sort, limit=size, cursor=after
        ),
    )
    more = len(rows) > size
    rows = rows[:size]
    last = rows[-1] if more and rows else None
    next_cursor = (
        Cursor(sort.token, last["created_at"], last["id"], digest).encode() if last else None
    )
    return rows, next_cursor


async def _job(access: TenantAccess, model: repository.Job, kind: str, job_id: UUID) -> Any:
    tenant_id = access.tenant.tenant_id
    row = await endpoints.read(
        access, lambda conn: repository.read_job(conn, model, tenant_id, job_id)
    )
    if row is None or not _visible(access, row):
        raise endpoints.not_found(kind, job_id)
    return row


# -- exports ----------------------------------------------------------------------------
@router.post(
    "/v1/exports",
    status_code=202,
    response_model=ExportRead,
    openapi_extra=problems(ValidationFailed, QuotaExceeded),
)
async def create_export(
    body: ExportCreate,
    request: Request,
    access: CanCreateExports,
    keyring: Keyring,
    queue: JobQueue,
    settings: PlatformSettings,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Export a list (the records `GET /v1/{object}` with this `filter` and `sort` gives
    the caller: its record scope, sealed fields in clear only with pii:read) to a CSV or
    JSON Lines file, written by the worker with no row limit. 202 with the export; poll
    `GET /v1/exports/{id}` until `state` is `done` for its `download_url`."""
    spec = OBJECTS[body.object]
    if not access.can(spec.object, "read"):
        raise _forbidden(access, spec.object, "read", "an export reads")
    await _room_for_files(access)
    # Checked now, as the list would check them (the worker checks again when it runs).
    parsed = await endpoints.list_filter(access, spec.repository, body.filter, spec.filterable)
    if parsed.searched and not access.can("pii", "read"):
        raise Forbidden(f"Filtering by {', '.join(parsed.searched)} needs the pii:read permission.")
    asked = [body.sort, *(body.fields or ())]
    if service.names_custom(asked):
        fields = await _custom_fields(access, spec)
        service.check_custom("sort", [body.sort] if body.sort else [], fields, sorting=True)
        service.check_custom("fields", body.fields or [], fields)
    requester = _requester(access)

    async def produce(session: AsyncSession) -> StoredResponse:
        row = await service.create_export(session, access.tenant, keyring, body, requester)
        # Kept for a retry with the same key: the id, never the filter in clear.
        return StoredResponse(202, {"id": str(row["id"])})

    payload = body.model_dump(mode="json")
    stored = await endpoints.idempotent(
        access, request, idempotency_key, payload, service.EXPORT, produce
    )
    export_id = UUID(stored.body["id"])
    await jobs.enqueue(queue, service.EXPORT, access.tenant.tenant_id, export_id)
    row = await _job(access, DataExport, service.EXPORT, export_id)
    shown = await service.export_read(keyring, access.tenant.tenant_id, row, None)
    return stored_response(replace(stored, body=shown))


@router.get("/v1/exports", response_model=Page[ExportRead])
async def list_exports(
    request: Request,
    access: CanReadExports,
    keyring: Keyring,
    settings: PlatformSettings,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Response:
    """The tenant's exports the caller may see (see the module), newest first."""
    rows, next_cursor = await _page(access, service.EXPORT, DataExport, limit, cursor)
    link = _link(request, settings.transfer_url_ttl)
    tenant_id = access.tenant.tenant_id
    data = [await service.export_read(keyring, tenant_id, row, link) for row in rows]
    return json_response({"data": data, "next_cursor": next_cursor})


@router.get("/v1/exports/{export_id}", response_model=ExportRead)
async def get_export(
    export_id: UUID,
    request: Request,
    access: CanReadExports,
    keyring: Keyring,
    settings: PlatformSettings,
) -> Response:
    """The export; once `done`, with a signed `download_url` valid for
    `MERIDIAN_TRANSFER_URL_TTL` seconds (15 minutes by default)."""
    row = await _job(access, DataExport, service.EXPORT, export_id)
    link = _link(request, settings.transfer_url_ttl)
    return json_response(await service.export_read(keyring, access.tenant.tenant_id, row, link))


@router.get(
    "/v1/exports/{export_id}/download",
    response_class=Response,
    responses=_FILE_RESPONSES,
    openapi_extra=_SIGNED_PROBLEMS,
)
async def download_export(
    export_id: UUID, signed: SignedTenantDep, expires: ExpiresQuery, signature: SignatureQuery
) -> Response:
    """The export's file, by the signed URL its `download_url` gives (no token)."""
    tenant = await _signed(signed, service.DOWNLOAD, export_id, expires, signature)
    tenant_id = tenant.tenant.tenant_id
    async with tenant.reader() as conn:
        row = await repository.read_job(conn, DataExport, tenant_id, export_id)
    if row is None or row["state"] != "done" or row["file_id"] is None:
        raise NotFound(f"No export with id {export_id}.")
    async with tenant.write() as session:
        # Audited: who asked for the file is in the export; that it was fetched, here.
        service.emit(
            session, tenant_id, service.EXPORT, "downloaded", row, service.Requester.of(row)
        )
    name = f"{row['object']}-{export_id}.{row['format']}"
    return await _file(tenant, row["file_id"], name)


# -- imports ----------------------------------------------------------------------------
@router.post(
    "/v1/imports",
    status_code=202,
    response_model=ImportRead,
    openapi_extra={
        "requestBody": import_request_body(),
        **problems(BadRequest, UnsupportedMediaType, ValidationFailed, QuotaExceeded),
    },
)
async def create_import(
    request: Request,
    access: CanCreateImports,
    keyring: Keyring,
    queue: JobQueue,
    settings: PlatformSettings,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Import a CSV or JSON Lines file of one object's records: multipart/form-data, an
    `options` part (JSON; first, so a wrong request is refused before the upload) and a
    `file` part, stored as it arrives (up to
    `MERIDIAN_MAX_IMPORT_BYTES`, 100 MiB by default). The worker writes each row as the
    object's batch writes do (the same validation, duplicate rules, custom fields and
    events), 500 rows per transaction with the progress, so an interrupted import goes
    on where it stopped. 202 with the import; poll `GET /v1/imports/{id}`."""
    tenant_id = access.tenant.tenant_id
    chosen: dict[str, Any] = {}

    async def check_options(raw: bytes) -> None:
        try:
            options = IMPORT_OPTIONS.validate_json(raw)
        except ValidationError as exc:
            errors = [{**e, "loc": ("options", *e.get("loc", ()))} for e in exc.errors()]
            raise validation_failed(errors) from exc
        spec = OBJECTS[options.object]
        if not access.can(spec.object, "create"):
            raise _forbidden(access, spec.object, "create", "an import creates")
        await _room_for_files(access)
        if options.on_match == "update" and not access.can(spec.object, "update"):
            raise _forbidden(access, spec.object, "update", "this import updates")
        if options.mapping and service.names_custom(list(options.mapping.values())):
            service.check_import(options, await _custom_fields(access, spec))
        chosen["options"] = options

    async def open_file(media_type: str | None, filename: str | None) -> files.FileWriter:
        chosen["part"] = (media_type, filename)
        file_id = new_id()
        cipher = await keyring.active_cipher(tenant_id)
        await endpoints.transact(
            access,
            service.IMPORT,
            lambda session: repository.insert_file(
                session,
                tenant_id,
                file_id,
                purpose="upload",
                media_type=(media_type or "application/octet-stream")[:64],
                key_version=cipher.version,
                expires_at=datetime.now(UTC) + service.UPLOAD_GRACE,
            ),
        )
        chosen["file_id"] = file_id
        return files.FileWriter(files.file_cipher(cipher, file_id), tenant_id, file_id)

    async def store(chunks: list[files.Chunk]) -> None:
        file_id: UUID = chosen["file_id"]
        await endpoints.transact(
            access,
            service.IMPORT,
            lambda session: repository.insert_chunks(session, tenant_id, file_id, chunks),
        )

    try:
        received = await uploads.receive(
            request, check_options=check_options, open_file=open_file, store=store
        )
        options: ImportOptions = chosen["options"]
        format_ = _format_of(options, *chosen["part"])
    except BaseException:
        await _forget_upload(access, chosen.get("file_id"))
        raise
    file_id = chosen["file_id"]
    payload = {"options": options.model_dump(mode="json"), "file": received.sha256}
    requester = _requester(access)

    async def produce(session: AsyncSession) -> StoredResponse:
        expires = service.expiry(settings.transfer_retention_days)
        await repository.complete_file(session, tenant_id, file_id, expires)
        row = await service.create_import(
            session, access.tenant, options, format_, file_id, received.size, requester
        )
        return StoredResponse(202, {"id": str(row["id"])})

    async def replayed(session: AsyncSession) -> None:
        # The first upload of this request is the one imported.
        await repository.delete_file(session, tenant_id, file_id)

    stored = await endpoints.idempotent(
        access, request, idempotency_key, payload, service.IMPORT, produce, replayed=replayed
    )
    import_id = UUID(stored.body["id"])
    await jobs.enqueue(queue, service.IMPORT, tenant_id, import_id)
    row = await _job(access, DataImport, service.IMPORT, import_id)
    shown = await service.import_read(keyring, tenant_id, row, None)
    return stored_response(replace(stored, body=shown))


async def _room_for_files(access: TenantAccess) -> None:
    """A new upload or export, unless the tenant's stored files reached its plan's
    ``stored_bytes`` (409 ``quota-exceeded``). Checked before the file is written, so a
    file under way may take the tenant past it by its own size at most."""
    tenant_id, limit = access.tenant.tenant_id, access.limits.stored_bytes
    used = await endpoints.read(access, lambda conn: quota.stored_bytes(conn, tenant_id))
    if used >= limit:
        raise QuotaExceeded(
            f"The tenant's files take {used} bytes, its plan's limit (stored_bytes: "
            f"{limit}); delete exports or imports, or ask for a larger plan.",
            quota="stored_bytes",
            limit=limit,
            used=used,
        )


def _format_of(options: ImportOptions, media_type: str | None, filename: str | None) -> str:
    if options.format is not None:
        return options.format
    if media_type in UPLOAD_TYPES:
        return UPLOAD_TYPES[media_type]
    for suffix, format_ in UPLOAD_SUFFIXES.items():
        if filename and filename.lower().endswith(suffix):
            return format_
    raise invalid_field(
        "options.format",
        "say csv or jsonl: the file part's Content-Type and name do not tell",
        "missing",
    )


async def _forget_upload(access: TenantAccess, file_id: UUID | None) -> None:
    """What a refused or broken upload stored (retention would delete it a day later)."""
    if file_id is None:
        return
    try:
        await endpoints.transact(
            access,
            service.IMPORT,
            lambda session: repository.delete_file(session, access.tenant.tenant_id, file_id),
        )
    except Exception as exc:
        logger.warning("upload %s not deleted (retention will): %s", file_id, exc)


@router.get("/v1/imports", response_model=Page[ImportRead])
async def list_imports(
    request: Request,
    access: CanReadImports,
    keyring: Keyring,
    settings: PlatformSettings,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Response:
    """The tenant's imports the caller may see (see the module), newest first."""
    rows, next_cursor = await _page(access, service.IMPORT, DataImport, limit, cursor)
    link = _link(request, settings.transfer_url_ttl)
    tenant_id = access.tenant.tenant_id
    data = [await service.import_read(keyring, tenant_id, row, link) for row in rows]
    return json_response({"data": data, "next_cursor": next_cursor})


@router.get("/v1/imports/{import_id}", response_model=ImportRead)
async def get_import(
    import_id: UUID,
    request: Request,
    access: CanReadImports,
    keyring: Keyring,
    settings: PlatformSettings,
) -> Response:
    """The import and its progress (committed with each chunk of rows); once it ended
    with failed rows, a signed `errors_url` of its error report."""
    row = await _job(access, DataImport, service.IMPORT, import_id)
    link = _link(request, settings.transfer_url_ttl)
    return json_response(await service.import_read(keyring, access.tenant.tenant_id, row, link))


@router.post(
    "/v1/imports/{import_id}/cancel", response_model=ImportRead, openapi_extra=problems(Conflict)
)
async def cancel_import(
    import_id: UUID,
    request: Request,
    access: CanUpdateImports,
    keyring: Keyring,
    settings: PlatformSettings,
) -> Response:
    """Stop the import after the chunk being written: what was committed stays (the
    counts say what), nothing more is written. A finished import is 409."""
    tenant_id = access.tenant.tenant_id
    async with endpoints.writing(access, service.IMPORT) as session:
        row = await repository.lock_job(session, DataImport, tenant_id, import_id)
        if row is None or not _visible(access, row):
            raise endpoints.not_found(service.IMPORT, import_id)
        row = await service.cancel_import(
            session, access.tenant, row, retention_days=settings.transfer_retention_days
        )
    link = _link(request, settings.transfer_url_ttl)
    return json_response(await service.import_read(keyring, tenant_id, row, link))


@router.get(
    "/v1/imports/{import_id}/errors",
    response_class=Response,
    responses=_FILE_RESPONSES,
    openapi_extra=_SIGNED_PROBLEMS,
)
async def download_import_errors(
    import_id: UUID, signed: SignedTenantDep, expires: ExpiresQuery, signature: SignatureQuery
) -> Response:
    """The import's error report (CSV: row, line, column, field, type, detail), by the
    signed URL its `errors_url` gives (no token)."""
    tenant = await _signed(signed, service.ERRORS, import_id, expires, signature)
    async with tenant.reader() as conn:
        row = await repository.read_job(conn, DataImport, tenant.tenant.tenant_id, import_id)
    if row is None or row["report_file_id"] is None:
        raise NotFound(f"No error report of import {import_id}.")
    return await _file(tenant, row["report_file_id"], f"import-{import_id}-errors.csv")


# -- signed downloads -------------------------------------------------------------------
async def _signed(
    signed: SignedTenant | None, purpose: str, job_id: UUID, expires: int, signature: str
) -> SignedTenant:
    """The tenant the URL names, if its signature holds (else 403) and it has not
    expired (else 410). An unknown tenant is a wrong signature: the answer tells nobody
    which tenants exist."""
    valid = signed is not None and await files.verify(
        signed.keyring, purpose, signed.tenant.tenant_id, job_id, expires, signature
    )
    if signed is None or not valid:
        raise Forbidden("The link's signature is not valid: use the URL as it was given.")
    if expires < time.time():
        raise Gone("The link has expired: read the job again for a new one.")
    return signed


async def _file(tenant: SignedTenant, file_id: UUID, name: str) -> Response:
    """The file streamed, one chunk at a time (each read in its own short transaction)."""
    tenant_id = tenant.tenant.tenant_id
    async with tenant.reader() as conn:
        found = await repository.read_file(conn, tenant_id, file_id)
    if found is None or not found["complete"]:
        raise Gone("The file is no longer kept: files are deleted after their retention.")
    try:
        cipher = await tenant.keyring.cipher(tenant_id, found["key_version"])
    except KeyUnavailable as exc:
        raise Gone("The file can no longer be read: the key it was sealed with is gone.") from exc
    aead = files.file_cipher(cipher, file_id)

    async def read(seq: int) -> tuple[int, bytes] | None:
        async with tenant.reader() as conn:
            return await repository.read_chunk(conn, tenant_id, file_id, seq)

    async def body() -> AsyncIterator[bytes]:
        async for _, raw in files.chunks_of(aead, tenant_id, file_id, found["chunks"], read):
            yield raw

    return StreamingResponse(
        body(),
        media_type=found["media_type"],
        headers={
            "Content-Length": str(found["raw_bytes"]),
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        },
    )
