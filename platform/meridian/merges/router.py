"""Duplicate rules, a record's duplicates, merges and their undo: HTTP only."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import replace
from typing import Annotated, Any, Literal, cast
from uuid import UUID

from fastapi import APIRouter, Query, Request
from sqlalchemy import and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from authz.fields import MASKED, PII_PERMISSION, SENSITIVE_FIELDS, Masker
from meridian.accounts.schemas import AccountRead
from meridian.contacts.schemas import ContactRead
from meridian.crud import endpoints
from meridian.crud.http import (
    CursorQuery,
    IdempotencyKeyHeader,
    IfMatchHeader,
    IfNoneMatchHeader,
    LimitQuery,
    page_body,
    stored_response,
)
from meridian.crud.idempotency import StoredResponse
from meridian.crud.pagination import Cursor, Sort, check_limit, filters_digest
from meridian.crud.schemas import Page
from meridian.deps import (
    CanCreateDuplicateRules,
    CanDeleteDuplicateRules,
    CanReadAccounts,
    CanReadContacts,
    CanReadDuplicateRules,
    CanReadLeads,
    CanReadMerges,
    CanUndoMerges,
    CanUpdateAccounts,
    CanUpdateContacts,
    CanUpdateDuplicateRules,
    CanUpdateLeads,
    Keyring,
    TenantAccess,
    record_viewer,
)
from meridian.encryption.fields import sealed
from meridian.errors import Conflict, Forbidden, Gone, MethodNotAllowed, NotFound, problem_body
from meridian.leads.schemas import LeadRead
from meridian.leads.service import ConvertedLead
from meridian.merges import service
from meridian.merges.matching import PLURALS
from meridian.merges.models import DuplicateRule, MergeRecord
from meridian.merges.repository import DuplicateRuleRepository, MergeRepository, table_of
from meridian.merges.schemas import (
    AccountMerge,
    ContactMerge,
    DuplicateRuleCreate,
    DuplicateRuleRead,
    DuplicateRuleUpdate,
    Duplicates,
    LeadMerge,
    MergeRead,
    MergeRequest,
    MergeResult,
    MergeUndo,
)
from meridian.web.openapi import problems
from meridian.web.responses import json_response, problem_response

RULE = "duplicate_rule"
rules_router = APIRouter(prefix="/v1/duplicate-rules", tags=["duplicates"])
router = APIRouter(prefix="/v1", tags=["duplicates"])
merges_router = APIRouter(prefix="/v1/merges", tags=["duplicates"])
# POST /v1/{accounts|contacts|leads}/merge, then a refusal of every other method there
# (405, Allow: POST) rather than the record routes beside it, where "merge" would be read
# as an id (422): included ahead of the records' routers (app.py), as a batch route and
# its refusal are ahead of its domain's /{id}.
merging = APIRouter(prefix="/v1", tags=["duplicates"])

RULES_SORT = Sort("created_at", DuplicateRule.created_at, descending=False)
MERGES_SORT = Sort("created_at", MergeRecord.created_at, descending=True)
MAX_DUPLICATES = 100
DuplicatesLimit = Annotated[
    int,
    Query(
        ge=1,
        le=MAX_DUPLICATES,
        description=f"How many of the best matches (1-{MAX_DUPLICATES}); the list is not paged.",
    ),
]
KindQuery = Annotated[Literal["account", "contact", "lead"] | None, Query()]


# -- duplicate rules ----------------------------------------------------------------------------
@rules_router.post(
    "", status_code=201, response_model=DuplicateRuleRead, openapi_extra=problems(Conflict)
)
async def create_duplicate_rule(
    body: DuplicateRuleCreate,
    request: Request,
    access: CanCreateDuplicateRules,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """A rule of the tenant's: once it has one for a kind, its rules replace the
    defaults for that kind. Names are unique per kind (409)."""
    return await endpoints.create(
        access,
        request,
        idempotency_key,
        body,
        lambda session: service.duplicate_rule.create(session, access.tenant, body),
        kind=RULE,
    )


@rules_router.get("", response_model=Page[DuplicateRuleRead])
async def list_duplicate_rules(
    access: CanReadDuplicateRules,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    kind: KindQuery = None,
) -> Response:
    where = [DuplicateRule.kind == kind] if kind is not None else []
    return await endpoints.listing(
        access,
        DuplicateRuleRepository,
        where=where,
        filters={"kind": kind},
        sort=RULES_SORT,
        limit=limit,
        cursor=cursor,
    )


@rules_router.get("/{duplicate_rule_id}", response_model=DuplicateRuleRead)
async def get_duplicate_rule(
    duplicate_rule_id: UUID, access: CanReadDuplicateRules, if_none_match: IfNoneMatchHeader = None
) -> Response:
    return await endpoints.fetch(
        access, DuplicateRuleRepository, RULE, duplicate_rule_id, if_none_match
    )


@rules_router.patch(
    "/{duplicate_rule_id}", response_model=DuplicateRuleRead, openapi_extra=problems(Conflict)
)
async def update_duplicate_rule(
    duplicate_rule_id: UUID,
    body: DuplicateRuleUpdate,
    access: CanUpdateDuplicateRules,
    if_match: IfMatchHeader = None,
) -> Response:
    return await endpoints.change(
        access,
        RULE,
        duplicate_rule_id,
        if_match,
        lambda session, version: service.duplicate_rule.update(
            session, access.tenant, duplicate_rule_id, body, version
        ),
    )


@rules_router.delete("/{duplicate_rule_id}", status_code=204)
async def delete_duplicate_rule(
    duplicate_rule_id: UUID, access: CanDeleteDuplicateRules, if_match: IfMatchHeader = None
) -> Response:
    return await endpoints.remove(
        access, DuplicateRuleRepository, RULE, duplicate_rule_id, if_match
    )


# -- a record's duplicates ----------------------------------------------------------------------
async def _duplicates(
    access: TenantAccess, keyring: Keyring, kind: str, record_id: UUID, limit: int
) -> Response:
    tenant_id, viewer = access.tenant.tenant_id, record_viewer(access)
    found = await endpoints.read(
        access,
        lambda conn: service.find_duplicates(
            conn, keyring, tenant_id, kind, record_id, viewer, limit
        ),
    )
    if found is None:
        raise endpoints.not_found(kind, record_id)
    rows = [row for row, _, _ in found.matches]
    rows = await endpoints.opened_rows(access, kind, rows)
    data = [
        {
            "record": endpoints.shown(access, kind, row),
            "score": score,
            "rules": [{"id": h.rule.id, "name": h.rule.name, "score": h.score} for h in hits],
        }
        for row, (_, score, hits) in zip(rows, found.matches, strict=True)
    ]
    rules = [{"id": r.id, "name": r.name} for r in found.rules]
    return json_response({"record_id": record_id, "data": data, "rules": rules})


_DUPLICATES_DOC = (
    "The records that match this one under the tenant's duplicate rules (or the default "
    "rules), best first, among those the caller may see."
)


@router.get(
    "/accounts/{account_id}/duplicates",
    response_model=Duplicates[AccountRead],
    description=_DUPLICATES_DOC,
)
async def list_account_duplicates(
    account_id: UUID, access: CanReadAccounts, keyring: Keyring, limit: DuplicatesLimit = 20
) -> Response:
    return await _duplicates(access, keyring, "account", account_id, limit)


@router.get(
    "/contacts/{contact_id}/duplicates",
    response_model=Duplicates[ContactRead],
    description=_DUPLICATES_DOC,
)
async def list_contact_duplicates(
    contact_id: UUID, access: CanReadContacts, keyring: Keyring, limit: DuplicatesLimit = 20
) -> Response:
    return await _duplicates(access, keyring, "contact", contact_id, limit)


@router.get(
    "/leads/{lead_id}/duplicates",
    response_model=Duplicates[LeadRead],
    description=_DUPLICATES_DOC,
)
async def list_lead_duplicates(
    lead_id: UUID, access: CanReadLeads, keyring: Keyring, limit: DuplicatesLimit = 20
) -> Response:
    return await _duplicates(access, keyring, "lead", lead_id, limit)


# -- merging ---------------------------------------------------------------------------------------
class _Preview(Exception):
    """Ends a dry run's transaction with a rollback, carrying what the merge would do."""

    def __init__(self, merged: service.Merged) -> None:
        super().__init__("dry run")
        self.merged = merged


def _masker(access: TenantAccess, kind: str, name: str, choice: Mapping[str, Any]) -> Masker:
    """How a preview entry's values are shown: in clear with pii:read; else a built-in
    sensitive field's by its mask, a sensitive custom field's hidden whole."""
    if access.can(*PII_PERMISSION):
        return _clear
    if choice.get("sensitive"):
        return _hidden
    return SENSITIVE_FIELDS.get(kind, {}).get(name, _clear)


def _clear(value: str) -> str:
    return value


def _hidden(_: str) -> str:
    return MASKED


def _preview(access: TenantAccess, kind: str, fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def shown(mask: Masker, value: Any) -> Any:
        return mask(value) if isinstance(value, str) and value else value

    out: dict[str, Any] = {}
    for name, choice in fields.items():
        mask = _masker(access, kind, name, choice)
        out[name] = {
            "chosen": choice["chosen"],
            "value": shown(mask, choice["value"]),
            "candidates": [
                {"record_id": c["record_id"], "value": shown(mask, c["value"])}
                for c in choice["candidates"]
            ],
        }
    return out


def _result(merged: service.Merged, *, dry_run: bool) -> dict[str, Any]:
    """A merge's answer as kept for an Idempotency-Key replay: the survivor as stored
    (its ciphertexts as base64, never in clear)."""
    return {
        "dry_run": dry_run,
        "merge_id": None if dry_run else merged.merge_id,
        "kind": merged.kind,
        "survivor": sealed(merged.survivor),
        "merged_ids": merged.merged_ids,
        "reparented": merged.reparented,
        "fields": None,
    }


async def _merge(
    access: TenantAccess,
    request: Request,
    keyring: Keyring,
    kind: str,
    body: MergeRequest,
    idempotency_key: str | None,
) -> Response:
    plural = PLURALS[kind]
    if not access.can(plural, "delete"):
        # The merged records are deleted.
        raise Forbidden(
            f"The role '{access.actor.role}' may not delete {plural}, which a merge does.",
            object=plural,
            action="delete",
        )
    viewer, actor = record_viewer(access), access.event_actor

    def work(session: Any) -> Awaitable[service.Merged]:
        return service.merge.merge(
            session, access.tenant, kind, body, keyring, viewer=viewer, actor=actor
        )

    if body.dry_run:
        try:
            async with endpoints.writing(access, kind) as session:
                raise _Preview(await work(session))
        except _Preview as done:
            preview = done.merged
        answer = _result(preview, dry_run=True)
        answer["fields"] = _preview(access, kind, preview.fields)
        answer["survivor"] = await _shown(access, kind, answer["survivor"])
        return json_response(answer)

    async def produce(session: AsyncSession) -> StoredResponse:
        merged = await work(session)
        location = f"/v1/merges/{merged.merge_id}"
        return StoredResponse(201, _result(merged, dry_run=False), {"Location": location})

    payload = body.model_dump(mode="json")
    stored = await endpoints.idempotent(access, request, idempotency_key, payload, kind, produce)
    shown = {**stored.body, "survivor": await _shown(access, kind, stored.body["survivor"])}
    return stored_response(replace(stored, body=shown))


async def _shown(access: TenantAccess, kind: str, row: dict[str, Any]) -> Any:
    return endpoints.shown(access, kind, await endpoints.opened(access, kind, row))


_MERGE_DOC = (
    "Merges `merged_ids` (1-100) into `survivor_id`, in one transaction: the survivor "
    "takes the chosen values, every reference to a merged record (activities, "
    "opportunities, contacts, cases, child accounts, shares, custom lookups, converted "
    "leads; also those the caller cannot see) moves to the survivor, and the merged "
    "records are deleted. Every record must be in the caller's scope (404), and the role "
    "must update and delete the kind (403). 201 with the merge's Location; with "
    "`dry_run`, 200 and the preview, nothing changed. Undo within 30 days: POST "
    "/v1/merges/{merge_id}/undo."
)
_MERGE_PROBLEMS = problems(Conflict, Forbidden, NotFound)
_DRY_RUN = "The dry run's preview: the merge as it would be; nothing changed."


@merging.post(
    "/accounts/merge",
    status_code=201,
    response_model=MergeResult[AccountRead],
    responses={200: {"model": MergeResult[AccountRead], "description": _DRY_RUN}},
    description=_MERGE_DOC,
    openapi_extra=_MERGE_PROBLEMS,
)
async def merge_accounts(
    body: AccountMerge,  # type: ignore[valid-type]
    request: Request,
    access: CanUpdateAccounts,
    keyring: Keyring,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await _merge(access, request, keyring, "account", body, idempotency_key)


@merging.post(
    "/contacts/merge",
    status_code=201,
    response_model=MergeResult[ContactRead],
    responses={200: {"model": MergeResult[ContactRead], "description": _DRY_RUN}},
    description=_MERGE_DOC,
    openapi_extra=_MERGE_PROBLEMS,
)
async def merge_contacts(
    body: ContactMerge,  # type: ignore[valid-type]
    request: Request,
    access: CanUpdateContacts,
    keyring: Keyring,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await _merge(access, request, keyring, "contact", body, idempotency_key)


@merging.post(
    "/leads/merge",
    status_code=201,
    response_model=MergeResult[LeadRead],
    responses={200: {"model": MergeResult[LeadRead], "description": _DRY_RUN}},
    description=_MERGE_DOC,
    openapi_extra=problems(Conflict, Forbidden, NotFound, ConvertedLead),
)
async def merge_leads(
    body: LeadMerge,  # type: ignore[valid-type]
    request: Request,
    access: CanUpdateLeads,
    keyring: Keyring,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Converted leads cannot be merged (409 lead-converted)."""
    return await _merge(access, request, keyring, "lead", body, idempotency_key)


class _Refusal:
    """405 with ``Allow: POST``, whatever the method (an ASGI app, as a batch route's
    refusal is: Starlette's route of one takes every method and names none in Allow)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = MethodNotAllowed(f"{scope['method']} is not allowed here; a merge is POSTed.")
        body = problem_body(
            err.status_code, err.type, err.title, err.detail, instance=scope.get("path")
        )
        await problem_response(body, {"Allow": "POST"})(scope, receive, send)


for _plural in PLURALS.values():
    merging.add_route(
        f"/v1/{_plural}/merge", cast(Any, _Refusal()), methods=None, include_in_schema=False
    )


# -- merges ----------------------------------------------------------------------------------------
def _visible_merges(access: TenantAccess) -> list[Any]:
    """What a scoped user sees of the merges: those they made, and those whose survivor
    is in their record scope."""
    viewer = record_viewer(access)
    if viewer is None:
        return []
    tenant_id = access.tenant.tenant_id
    options: list[Any] = [MergeRecord.actor_id == str(viewer)]
    for kind in PLURALS:
        repo = service.repository(kind)
        table = table_of(kind)
        visible = repo.visibility(tenant_id, viewer)
        survivor = select(table.c.id).where(
            table.c.tenant_id == tenant_id, table.c.id == MergeRecord.survivor_id
        )
        if visible is not None:
            survivor = survivor.where(visible)
        options.append(and_(MergeRecord.kind == kind, exists(survivor)))
    return [or_(*options)]


@merges_router.get("", response_model=Page[MergeRead])
async def list_merges(
    access: CanReadMerges,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    kind: KindQuery = None,
    survivor_id: UUID | None = None,
    state: Annotated[Literal["merged", "undone", "expired"] | None, Query()] = None,
) -> Response:
    """The tenant's merges, newest first."""
    size = check_limit(limit)
    filters: dict[str, Any] = {"kind": kind, "survivor_id": survivor_id, "state": state}
    where = [getattr(MergeRecord, k) == v for k, v in filters.items() if v is not None]
    where += _visible_merges(access)
    tenant_id = access.tenant.tenant_id
    digest = filters_digest(tenant_id, filters)
    after = Cursor.decode(cursor, sort=MERGES_SORT, digest=digest) if cursor else None
    rows = await endpoints.read(
        access,
        lambda conn: MergeRepository.fetch_page(
            conn, tenant_id, where=where, sort=MERGES_SORT, limit=size, cursor=after
        ),
    )
    body = page_body(rows, limit=size, sort=MERGES_SORT, digest=digest)
    body["data"] = [service.merge_row(r) for r in body["data"]]
    return json_response(body)


@merges_router.get("/{merge_id}", response_model=MergeRead)
async def get_merge(merge_id: UUID, access: CanReadMerges) -> Response:
    tenant_id = access.tenant.tenant_id
    where = [MergeRecord.id == merge_id, *_visible_merges(access)]
    rows = await endpoints.read(
        access,
        lambda conn: MergeRepository.fetch_page(
            conn, tenant_id, where=where, sort=MERGES_SORT, limit=1, cursor=None
        ),
    )
    if not rows:
        raise endpoints.not_found("merge", merge_id)
    return json_response(service.merge_row(rows[0]))


@merges_router.post(
    "/{merge_id}/undo",
    response_model=MergeRead,
    openapi_extra=problems(Conflict, Forbidden, Gone),
)
async def undo_merge(
    merge_id: UUID,
    access: CanUndoMerges,
    keyring: Keyring,
    body: MergeUndo | None = None,
) -> Response:
    """Restores the merged records exactly (same ids and values, encrypted fields and
    custom fields included), moves every reference back to the record it named, and
    gives the survivor its values from before the merge, in one transaction. 409 once
    undone, when the survivor was deleted or changed since the merge (unless `force`), or
    when a merged record's external id or unique custom value is now another record's;
    410 after 30 days. References deleted or changed since the merge are left as they
    are and listed in `skipped`. The role must create and update the kind (403)."""
    force = body.force if body is not None else False
    viewer, actor = record_viewer(access), access.event_actor
    row = await endpoints.transact(
        access,
        "merge",
        lambda session: service.merge.undo(
            session,
            access.tenant,
            merge_id,
            keyring,
            force=force,
            viewer=viewer,
            actor=actor,
            can=access.can,
        ),
    )
    return json_response(service.merge_row(row))
