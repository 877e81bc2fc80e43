"""Requests and representations of exports and imports.

A request names its object first (``"object": "contacts"``), and what else it may say
depends on it: the fields it may export, sort by and map columns to, what records may
match by. Each object has its own model, so the OpenAPI document states exactly what a
request may hold; custom fields are ``custom.<name>``, checked against the tenant's
definitions when the request arrives (an unknown one is 422 ``not_found``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field, StringConstraints, TypeAdapter

from meridian.crud.filters import MAX_LENGTH as MAX_FILTER_LENGTH
from meridian.crud.schemas import Flag, InputModel
from meridian.transfers.objects import CUSTOM_NAME, OBJECTS

Format = Literal["csv", "jsonl"]
ExportState = Literal["queued", "running", "done", "failed"]
ImportState = Literal["queued", "running", "done", "failed", "cancelled"]
OnMatch = Literal["create", "skip", "update"]
MAX_FIELDS = 300
MAX_MAPPING = 500


def _one_of(names: Iterable[str], *, descending: bool = False) -> str:
    """An anchored pattern: one of ``names`` or ``custom.<name>`` (``-`` first too)."""
    sign = "-?" if descending else ""
    alternatives = "|".join(re.escape(n) for n in sorted(names))
    return rf"^{sign}({alternatives}|custom\.{CUSTOM_NAME})$"


def _column(obj: str) -> str:
    return _one_of(OBJECTS[obj].columns)


def _sort(obj: str) -> str:
    return _one_of(OBJECTS[obj].sortable, descending=True)


def _target(obj: str) -> str:
    return _one_of(OBJECTS[obj].importable)


_FILTER = Field(
    max_length=MAX_FILTER_LENGTH,
    description="Which records: the list filter syntax of GET /v1/{object} "
    "(docs/api.md, Filtering lists), e.g. `and(last_name[starts]:Lo,owner_id[eq]:<uuid>)`. "
    "An encrypted field (email, phone, tax id) needs pii:read, as in a list.",
)
_SORT_DESCRIPTION = (
    "The order of the file, as `sort` on the list (`-` first: descending); default "
    "`created_at`. `custom.<name>` sorts by a custom field."
)
_FIELDS_DESCRIPTION = (
    "The record's fields to write, in this order (CSV columns; JSON Lines keys); "
    "`custom.<name>` for a custom field. Default: every field, then every active custom "
    "field (CSV), or the record as the API returns it (JSON Lines)."
)
_MAPPING_DESCRIPTION = (
    'Column (CSV) or key (JSON Lines) of the file → the field it sets: `{"Email Address": '
    '"email", "Company size": "custom.company_size"}`. Columns not named are ignored. '
    "Default: each column or key named like a field (or `custom.<name>`; a JSON Lines "
    "record's `custom` object too) sets it."
)
_ON_MATCH = Field(
    description="What a row that matches an existing record (by `match_by`) does: "
    "`create` (default) creates every row as POST would; `skip` leaves the record as it is; "
    "`update` changes it as PATCH would. A row without a value to match by is created."
)
_DRY_RUN = Field(
    description="Check every row (validation, references, duplicates) and report what "
    "would happen, writing nothing."
)
_FORMAT = Field(
    description="The file's format; default: from the file part's Content-Type "
    "(text/csv, application/x-ndjson) or its name (.csv, .jsonl, .ndjson)."
)

AccountsColumn = Annotated[str, Field(pattern=_column("accounts"))]
ContactsColumn = Annotated[str, Field(pattern=_column("contacts"))]
LeadsColumn = Annotated[str, Field(pattern=_column("leads"))]
OpportunitiesColumn = Annotated[str, Field(pattern=_column("opportunities"))]
CasesColumn = Annotated[str, Field(pattern=_column("cases"))]
AccountsSort = Annotated[str, Field(pattern=_sort("accounts"), description=_SORT_DESCRIPTION)]
ContactsSort = Annotated[str, Field(pattern=_sort("contacts"), description=_SORT_DESCRIPTION)]
LeadsSort = Annotated[str, Field(pattern=_sort("leads"), description=_SORT_DESCRIPTION)]
OpportunitiesSort = Annotated[
    str, Field(pattern=_sort("opportunities"), description=_SORT_DESCRIPTION)
]
CasesSort = Annotated[str, Field(pattern=_sort("cases"), description=_SORT_DESCRIPTION)]
AccountsTarget = Annotated[str, Field(pattern=_target("accounts"))]
ContactsTarget = Annotated[str, Field(pattern=_target("contacts"))]
LeadsTarget = Annotated[str, Field(pattern=_target("leads"))]
OpportunitiesTarget = Annotated[str, Field(pattern=_target("opportunities"))]
CasesTarget = Annotated[str, Field(pattern=_target("cases"))]
Source = Annotated[str, StringConstraints(min_length=1, max_length=255)]


def _fields(description: str = _FIELDS_DESCRIPTION) -> Any:
    return Field(default=None, min_length=1, max_length=MAX_FIELDS, description=description)


def _mapping() -> Any:
    return Field(default=None, max_length=MAX_MAPPING, description=_MAPPING_DESCRIPTION)


# -- exports ---------------------------------------------------------------------------
class _ExportCreate(InputModel):
    format: Format = Field(description="`csv` or `jsonl` (JSON Lines, one record a line).")
    filter: Annotated[str | None, _FILTER] = None


class AccountsExport(_ExportCreate):
    object: Literal["accounts"]
    sort: AccountsSort | None = None
    fields: list[AccountsColumn] | None = _fields()


class ContactsExport(_ExportCreate):
    object: Literal["contacts"]
    sort: ContactsSort | None = None
    fields: list[ContactsColumn] | None = _fields()


class LeadsExport(_ExportCreate):
    object: Literal["leads"]
    sort: LeadsSort | None = None
    fields: list[LeadsColumn] | None = _fields()


class OpportunitiesExport(_ExportCreate):
    object: Literal["opportunities"]
    sort: OpportunitiesSort | None = None
    fields: list[OpportunitiesColumn] | None = _fields()


class CasesExport(_ExportCreate):
    object: Literal["cases"]
    sort: CasesSort | None = None
    fields: list[CasesColumn] | None = _fields()


ExportCreate = Annotated[
    AccountsExport | ContactsExport | LeadsExport | OpportunitiesExport | CasesExport,
    Field(discriminator="object"),
]


# -- imports ---------------------------------------------------------------------------
class _ImportOptions(InputModel):
    format: Annotated[Format | None, _FORMAT] = None
    on_match: Annotated[OnMatch, _ON_MATCH] = "create"
    dry_run: Annotated[Flag, _DRY_RUN] = False


class AccountsImport(_ImportOptions):
    object: Literal["accounts"]
    mapping: dict[Source, AccountsTarget] | None = _mapping()
    match_by: Literal["external_id"] = "external_id"


class ContactsImport(_ImportOptions):
    object: Literal["contacts"]
    mapping: dict[Source, ContactsTarget] | None = _mapping()
    match_by: Literal["external_id", "email"] = Field(
        default="external_id",
        description="`email`: the record whose email is the row's (compared through its "
        "blind index, as a search: trimmed, case-insensitive).",
    )
    allow_duplicate: Flag = Field(
        default=False,
        description="Create a contact even if its email is already on file, as "
        "POST /v1/contacts?allow_duplicate=true does.",
    )


class LeadsImport(_ImportOptions):
    object: Literal["leads"]
    mapping: dict[Source, LeadsTarget] | None = _mapping()
    match_by: Literal["external_id", "email"] = "external_id"


class OpportunitiesImport(_ImportOptions):
    object: Literal["opportunities"]
    mapping: dict[Source, OpportunitiesTarget] | None = _mapping()
    match_by: Literal["external_id"] = "external_id"


class CasesImport(_ImportOptions):
    object: Literal["cases"]
    mapping: dict[Source, CasesTarget] | None = _mapping()
    match_by: Literal["external_id"] = "external_id"


ImportOptions = Annotated[
    AccountsImport | ContactsImport | LeadsImport | OpportunitiesImport | CasesImport,
    Field(discriminator="object"),
]
IMPORT_OPTIONS: TypeAdapter[
    AccountsImport | ContactsImport | LeadsImport | OpportunitiesImport | CasesImport
] = TypeAdapter(ImportOptions)


def _inlined(schema: Any, definitions: dict[str, Any]) -> Any:
    """``schema`` with every ``$ref`` to its ``$defs`` replaced by the definition (the
    request body's document sits in a route's ``openapi_extra``, where no ref to the
    document's components would resolve to these models)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inlined(definitions[ref.removeprefix("#/$defs/")], definitions)
        return {
            k: _inlined(v, definitions)
            for k, v in schema.items()
            if k not in ("$defs", "discriminator")
        }
    if isinstance(schema, list):
        return [_inlined(item, definitions) for item in schema]
    return schema


def import_request_body() -> dict[str, Any]:
    """``POST /v1/imports``'s request body in the OpenAPI document: multipart, its
    ``options`` part (JSON) first, then the ``file``."""
    options = IMPORT_OPTIONS.json_schema()
    inlined = _inlined(options, options.get("$defs", {}))
    inlined["description"] = (
        "The import's options (JSON): the object, the column mapping, the match rule, a dry run."
    )
    return {
        "required": True,
        "description": "multipart/form-data with two parts: `options` (JSON) and `file` "
        "(CSV with a header row, or JSON Lines; UTF-8). Send `options` first: a request "
        "they refuse is then refused before the file is stored. The upload is "
        "stored as it arrives; the whole body may be up to MERIDIAN_MAX_IMPORT_BYTES "
        "(100 MiB by default; else 413).",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["options", "file"],
                    "additionalProperties": False,
                    "properties": {
                        "options": inlined,
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The rows: CSV (a header row first) or JSON Lines.",
                        },
                    },
                },
                "encoding": {
                    "options": {"contentType": "application/json"},
                    "file": {"contentType": "text/csv, application/x-ndjson"},
                },
            }
        },
    }


# -- representations ---------------------------------------------------------------------
class RequestedBy(BaseModel):
    type: Literal["user", "client"]
    id: str = Field(description="The user's id, or the OAuth client's id.")


class ExportRead(BaseModel):
    id: UUID
    object: str
    format: Format
    filter: str | None
    sort: str | None
    fields: list[str] | None
    state: ExportState = Field(description="queued, running, done or failed.")
    rows_written: int
    bytes_written: int = Field(description="The file's size so far (uncompressed).")
    requested_by: RequestedBy
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    download_url: str | None = Field(
        description="Once done: where to download the file, without a token, until "
        "`download_expires_at` (ask again for a new one). Null otherwise."
    )
    download_expires_at: datetime | None
    file_expires_at: datetime | None = Field(
        description="When the file is deleted (the export stays listed)."
    )


class ImportRead(BaseModel):
    id: UUID
    object: str
    format: Format
    mapping: dict[str, str] | None
    on_match: OnMatch
    match_by: str
    dry_run: bool
    allow_duplicate: bool
    state: ImportState = Field(description="queued, running, done, failed or cancelled.")
    bytes_total: int = Field(description="The upload's size.")
    bytes_done: int = Field(description="How much of the upload the committed rows cover.")
    rows_done: int
    created: int
    updated: int
    skipped: int
    failed: int
    requested_by: RequestedBy
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    errors_url: str | None = Field(
        description="Once rows failed: where to download the error report (CSV: row, "
        "line, column, field, type, detail), without a token, until `errors_expires_at`."
    )
    errors_expires_at: datetime | None
