"""The rules of exports and imports: what a request may ask, the jobs' rows and their
events, how a job is shown (with its signed download URL), cancelling an import.

Plain arguments (a session or connection, the tenant, the keyring, the requester);
nothing here commits or sees HTTP. The work itself runs in the worker
(``meridian.transfers.exporter``, ``meridian.transfers.importer``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from meridian.crud import custom
from meridian.errors import NOT_FOUND, Conflict, invalid_field
from meridian.events import outbox
from meridian.ids import new_id
from meridian.transfers import files, repository
from meridian.transfers.models import FINISHED, DataExport, DataImport
from meridian.transfers.objects import CUSTOM_PREFIX, Transferable
from meridian.transfers.schemas import ContactsImport, ExportCreate, ImportOptions
from tenancy.context import TenantContext
from tenancy.crypto import key_version_of
from tenancy.keyring import TenantKeyring

EXPORT = "export"
IMPORT = "import"
MEDIA_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
# What a signed URL is for (part of what it signs).
DOWNLOAD = "export-download"
ERRORS = "import-errors"
# Where an export's filter is sealed (the associated data names it).
_FILTER = ("data_export", "filter")
# An upload nobody finished (a broken connection) is deleted a day later.
UPLOAD_GRACE = timedelta(days=1)

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asked for a job: a user, or an OAuth client acting with its role."""

    type: str  # "user" | "client"
    id: str
    role: str | None = None  # a client's

    @property
    def user_id(self) -> UUID | None:
        return UUID(self.id) if self.type == "user" else None

    def values(self) -> dict[str, Any]:
        return {
            "requested_by_type": self.type,
            "requested_by_id": self.id,
            "requested_by_role": self.role,
        }

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Requester:
        return cls(row["requested_by_type"], row["requested_by_id"], row["requested_by_role"])


def expiry(days: int) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


# -- what a request may ask ----------------------------------------------------------
def names_custom(values: Sequence[str | None]) -> bool:
    """Whether any of ``values`` (a sort, fields, mapping targets) is a custom field."""
    return any(v is not None and v.lstrip("-").startswith(CUSTOM_PREFIX) for v in values)


def check_custom(
    location: str, values: Sequence[str], fields: Sequence[custom.Field], *, sorting: bool = False
) -> None:
    """Every ``custom.<name>`` of ``values`` names one of the tenant's active fields (a
    sort: one that sorts), else 422 naming ``location``."""
    known = {f.name: f for f in fields}
    for value in values:
        name = value.lstrip("-")
        if not name.startswith(CUSTOM_PREFIX):
            continue
        spec = known.get(name.removeprefix(CUSTOM_PREFIX))
        if spec is None:
            active = ", ".join(sorted(known)) or "none"
            raise invalid_field(
                location, f"no custom field {name!r}; active custom fields: {active}", NOT_FOUND
            )
        if sorting and spec.type == "multi_picklist":
            raise invalid_field(location, f"{name} is a multi-picklist, which does not sort")


def columns(
    spec: Transferable, fields: Sequence[custom.Field], asked: Sequence[str] | None
) -> list[str]:
    """The CSV's columns: those asked for (in order, once each), else every field of
    the record and every active custom field."""
    if asked:
        return list(dict.fromkeys(asked))
    return [*spec.columns, *(f"{CUSTOM_PREFIX}{f.name}" for f in fields)]


# -- exports ---------------------------------------------------------------------------
async def seal_filter(
    keyring: TenantKeyring, tenant_id: UUID, export_id: UUID, text: str | None
) -> bytes | None:
    if text is None:
        return None
    cipher = await keyring.active_cipher(tenant_id)
    return cipher.encrypt(*_FILTER, export_id, text)


async def open_filter(
    keyring: TenantKeyring, tenant_id: UUID, export_id: UUID, sealed: bytes | None
) -> str | None:
    if sealed is None:
        return None
    cipher = await keyring.cipher(tenant_id, key_version_of(sealed))
    return cipher.decrypt(*_FILTER, export_id, sealed)


async def create_export(
    session: AsyncSession,
    tenant: TenantContext,
    keyring: TenantKeyring,
    body: ExportCreate,
    requester: Requester,
) -> Row:
    export_id = new_id()
    row = await repository.insert_job(
        session,
        DataExport,
        {
            "tenant_id": tenant.tenant_id,
            "id": export_id,
            "object": body.object,
            "format": body.format,
            "filter_enc": await seal_filter(keyring, tenant.tenant_id, export_id, body.filter),
            "sort": body.sort,
            "fields": list(dict.fromkeys(body.fields)) if body.fields else None,
            **requester.values(),
        },
    )
    await repository.mark_unfinished(session, tenant.tenant_id, export_id, EXPORT)
    emit(session, tenant.tenant_id, EXPORT, "requested", row, requester)
    return row


def emit(
    session: AsyncSession,
    tenant_id: UUID,
    kind: str,
    action: str,
    row: Mapping[str, Any],
    requester: Requester,
    **extra: Any,
) -> None:
    """``export.*`` / ``import.*``: audited (``meridian.events.audit``). The record is
    what the job is, never what it read or wrote (no filter: it may name an email)."""
    record = {
        "id": row["id"],
        "object": row["object"],
        "format": row["format"],
        "requested_by": {"type": requester.type, "id": requester.id},
    }
    if kind == EXPORT:
        record |= {
            "sort": row["sort"],
            "fields": row["fields"],
            "filtered": bool(row["filter_enc"]),
        }
    else:
        record |= {"options": row["options"]}
    outbox.record(
        session,
        tenant_id,
        f"{kind}.{action}",
        kind,
        row["id"],
        owner_id=requester.user_id,
        record=record,
        extra=extra or None,
    )


@dataclass(frozen=True, slots=True)
class Link:
    """Where signed URLs point: the API's base URL as the client reached it, and how
    long they work."""

    base_url: str
    ttl: int

    async def signed(
        self, keyring: TenantKeyring, tenant_id: UUID, purpose: str, path: str, job_id: UUID
    ) -> tuple[str, datetime]:
        expires = int(time.time()) + self.ttl
        cipher = await keyring.active_cipher(tenant_id)
        signature = files.sign(cipher, purpose, tenant_id, job_id, expires)
        query = urlencode({"tenant": str(tenant_id), "expires": expires, "signature": signature})
        url = f"{self.base_url.rstrip('/')}{path}?{query}"
        return url, datetime.fromtimestamp(expires, UTC)


def _requested_by(row: Mapping[str, Any]) -> dict[str, str]:
    return {"type": row["requested_by_type"], "id": row["requested_by_id"]}


def _available(row: Mapping[str, Any]) -> bool:
    expires: datetime | None = row["expires_at"]
    return expires is not None and expires > datetime.now(UTC)


async def export_read(
    keyring: TenantKeyring, tenant_id: UUID, row: Mapping[str, Any], link: Link | None
) -> Row:
    """The export as the API shows it; ``link``: with a signed download URL once done."""
    url: str | None = None
    url_expires: datetime | None = None
    if link is not None and row["state"] == "done" and _available(row):
        path = f"/v1/exports/{row['id']}/download"
        url, url_expires = await link.signed(keyring, tenant_id, DOWNLOAD, path, row["id"])
    return {
        "id": row["id"],
        "object": row["object"],
        "format": row["format"],
        "filter": await open_filter(keyring, tenant_id, row["id"], row["filter_enc"]),
        "sort": row["sort"],
        "fields": row["fields"],
        "state": row["state"],
        "rows_written": row["rows_written"],
        "bytes_written": row["bytes_written"],
        "requested_by": _requested_by(row),
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "error": row["error"],
        "download_url": url,
        "download_expires_at": url_expires,
        "file_expires_at": row["expires_at"],
    }


# -- imports ---------------------------------------------------------------------------
def stored_options(options: ImportOptions) -> dict[str, Any]:
    return {
        "mapping": options.mapping,
        "on_match": options.on_match,
        "match_by": options.match_by,
        "dry_run": options.dry_run,
        "allow_duplicate": isinstance(options, ContactsImport) and options.allow_duplicate,
    }


def check_import(options: ImportOptions, fields: Sequence[custom.Field]) -> None:
    """The mapping's custom fields exist (422 ``not_found`` naming ``options.mapping``)."""
    if options.mapping:
        check_custom("options.mapping", list(options.mapping.values()), fields)


async def create_import(
    session: AsyncSession,
    tenant: TenantContext,
    options: ImportOptions,
    format_: str,
    upload: UUID,
    size: int,
    requester: Requester,
) -> Row:
    import_id = new_id()
    row = await repository.insert_job(
        session,
        DataImport,
        {
            "tenant_id": tenant.tenant_id,
            "id": import_id,
            "object": options.object,
            "format": format_,
            "options": stored_options(options),
            "upload_file_id": upload,
            "bytes_total": size,
            **requester.values(),
        },
    )
    await repository.mark_unfinished(session, tenant.tenant_id, import_id, IMPORT)
    emit(session, tenant.tenant_id, IMPORT, "requested", row, requester)
    return row


async def import_read(
    keyring: TenantKeyring, tenant_id: UUID, row: Mapping[str, Any], link: Link | None
) -> Row:
    """The import as the API shows it; ``link``: with a signed URL of its error report
    once it ended with failed rows."""
    url: str | None = None
    url_expires: datetime | None = None
    if (
        link is not None
        and row["state"] in FINISHED
        and row["report_file_id"] is not None
        and _available(row)
    ):
        path = f"/v1/imports/{row['id']}/errors"
        url, url_expires = await link.signed(keyring, tenant_id, ERRORS, path, row["id"])
    options = row["options"]
    return {
        "id": row["id"],
        "object": row["object"],
        "format": row["format"],
        "mapping": options.get("mapping"),
        "on_match": options["on_match"],
        "match_by": options["match_by"],
        "dry_run": options["dry_run"],
        "allow_duplicate": options.get("allow_duplicate", False),
        "state": row["state"],
        "bytes_total": row["bytes_total"],
        "bytes_done": row["next_offset"],
        "rows_done": row["rows_done"],
        "created": row["created"],
        "updated": row["updated"],
        "skipped": row["skipped"],
        "failed": row["failed"],
        "requested_by": _requested_by(row),
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "error": row["error"],
        "errors_url": url,
        "errors_expires_at": url_expires,
    }


async def cancel_import(
    session: AsyncSession, tenant: TenantContext, row: Row, *, retention_days: int
) -> Row:
    """Stops the import ``row`` (locked by the caller, so the chunk being written is
    waited for and the counts are those committed). A cancelled one is answered as it
    is; a finished one is 409."""
    if row["state"] == "cancelled":
        return row
    if row["state"] in FINISHED:
        raise Conflict(f"The import is {row['state']}: there is nothing to cancel.")
    was = row["state"]
    row = await repository.update_job(
        session,
        DataImport,
        tenant.tenant_id,
        row["id"],
        state="cancelled",
        finished_at=datetime.now(UTC),
        expires_at=expiry(retention_days),
    )
    await repository.finished(session, tenant.tenant_id, row["id"])
    if was == "queued":
        # No worker holds it: its upload goes now (a running one's goes when its
        # worker sees the cancellation).
        await repository.delete_file(session, tenant.tenant_id, row["upload_file_id"])
    emit(session, tenant.tenant_id, IMPORT, "cancelled", row, Requester.of(row), **counts(row))
    return row


def counts(row: Mapping[str, Any]) -> dict[str, Any]:
    """An import's outcome so far (its events carry it)."""
    return {k: row[k] for k in ("rows_done", "created", "updated", "skipped", "failed")}
