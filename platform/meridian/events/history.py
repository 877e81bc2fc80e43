"""A record's field history (``GET /v1/{contacts|accounts|opportunities|leads|cases|
activities}/{id}/history``):
who changed which field, from what to what, and when, read from the tenant's event log.

Nothing is stored for it: the log already holds every write's changes (an encrypted
field as ``{"changed": true}``, never a value), so a history is the record's
``<kind>.created|updated|deleted`` events, read through ``log.page`` and reshaped.

Who sees a record's history: the caller's role must read the record's kind (the route's
permission), and the record must be in the caller's record scope — the same predicate
as reading it by id, in the same read transaction as the history. A deleted record is
shown to those who could see it when it was deleted: its ``<kind>.deleted`` event is
checked against the caller's scope with the owner the record had then
(``log.in_scope``). A record the caller cannot see, and another tenant's id, are 404,
like a record that never existed. Once visible, the whole history is shown, including
changes made while another owner held the record.

Kept as long as the log (the tenant's event retention): older changes are gone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, and_, func, or_
from starlette.responses import Response

from meridian.crud import endpoints
from meridian.crud.http import LimitQuery
from meridian.crud.pagination import check_limit
from meridian.crud.repository import TenantRepository
from meridian.deps import RequireTenant, TenantAccess, record_viewer
from meridian.errors import InvalidCursor, NotFound, ValidationFailed, invalid_field
from meridian.events import log, outbox
from meridian.events.models import EventOutbox
from meridian.events.schemas import EventActor
from meridian.web.openapi import problems
from meridian.web.responses import json_response

router = APIRouter(tags=["history"])

ACTIONS = ("created", "updated", "deleted")
# Bookkeeping a creation's record carries that is no field a user set.
_NOT_FIELDS = frozenset({"id", "version", "created_at", "updated_at"})

SeqCursor = Annotated[
    str | None,
    Query(
        description="The next_cursor of the previous page (a seq): the page continues "
        "after it in the order asked for.",
        pattern=r"^[0-9]{1,19}$",
    ),
]
OrderQuery = Annotated[
    Literal["asc", "desc"],
    Query(description="desc: newest first (the default); asc: oldest first."),
]


def _field_query(kind: str) -> Any:
    """The ``field`` parameter of ``kind``'s history: its fields, listed in the document
    when the document is built (the domains' repositories, which the kit cannot import,
    are registered by then)."""

    def listed(schema: dict[str, Any]) -> None:
        repo = TenantRepository.for_kind(kind)
        if repo is not None:
            schema["enum"] = fields_of(repo)

    return Query(
        description=f"Only the entries that set or changed this field of the {kind}.",
        max_length=63,
        pattern=r"^[a-z][a-z0-9_]*$",
        json_schema_extra=listed,
    )


MAX_SEQ = 2**63 - 1  # a bigint


def seq_cursor(cursor: str | None) -> int:
    """The seq a ``cursor`` names (0: none); one past a bigint is no seq this API gave
    (400 invalid-cursor, as for a list's cursor, rather than a database error)."""
    after = int(cursor) if cursor else 0
    if after > MAX_SEQ:
        raise InvalidCursor("The cursor is not one this API issued.")
    return after


# -- what the API shows ---------------------------------------------------------------
class ValueChange(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    field: str
    from_: Any = Field(alias="from", description="The value before (null on creation).")
    to: Any = Field(description="The value after.")


class SealedChange(BaseModel):
    field: str = Field(description="An encrypted field: only that it changed is kept.")
    changed: Literal[True]


class HistoryEntry(BaseModel):
    seq: int = Field(description="The event's number in the tenant's log.")
    occurred_at: datetime
    actor: EventActor
    type: str = Field(description="The event: <kind>.created, <kind>.updated, <kind>.deleted.")
    action: Literal["created", "updated", "deleted"]
    changes: list[ValueChange | SealedChange] = Field(
        description="Per field: from and to, or changed: true for an encrypted field. A "
        "creation lists the fields it set; a deletion lists none."
    )


class HistoryRecord(BaseModel):
    kind: str
    id: UUID


class HistoryPage(BaseModel):
    record: HistoryRecord = Field(description="The record whose history this is.")
    data: list[HistoryEntry]
    next_cursor: str | None = Field(description="Set when more entries follow.")


def _changes(action: str, data: Mapping[str, Any]) -> list[dict[str, Any]]:
    if action == "created":
        record: Mapping[str, Any] = data.get("record") or {}
        return [
            {"field": f, "from": None, "to": v}
            for f, v in sorted(record.items())
            if f not in _NOT_FIELDS and v is not None
        ]
    if action == "updated":
        changed: Mapping[str, Any] = data.get("changes") or {}
        return [
            {"field": f, "changed": True}
            if c.get("changed") is True
            else {"field": f, "from": c.get("old"), "to": c.get("new")}
            for f, c in sorted(changed.items())
        ]
    return []


def entry(event: Mapping[str, Any], field: str | None = None) -> dict[str, Any]:
    """An event of the log (``log.public``) as a history entry; with ``field``, only
    that field's change."""
    action = event["type"].partition(".")[2]
    changes = _changes(action, event["data"])
    if field is not None:
        changes = [c for c in changes if c["field"] == field]
    return {
        "seq": event["seq"],
        "occurred_at": event["occurred_at"],
        "actor": event["actor"],
        "type": event["type"],
        "action": action,
        "changes": changes,
    }


# -- reading ----------------------------------------------------------------------------
def fields_of(repo: type[TenantRepository[Any]]) -> list[str]:
    """The fields of a kind that a history can name (API names: ``email``, not
    ``email_enc``)."""
    names = {outbox.field_of(c.key) for c in repo.model.__table__.columns}
    hidden = {outbox.field_of(c) for c in repo.hidden}
    return sorted(n for n in names - hidden if n is not None and n not in _NOT_FIELDS)


def _touching(kind: str, field: str) -> ColumnElement[bool]:
    """Events that set ``field``: its creation (when it gave the field a value) and the
    updates that changed it."""
    e = EventOutbox
    return or_(
        and_(e.type == f"{kind}.updated", e.data["changes"].has_key(field)),
        and_(
            e.type == f"{kind}.created",
            func.jsonb_typeof(e.data["record"][field]) != "null",
        ),
    )


async def read_history(
    conn: asyncpg.Connection,
    repo: type[TenantRepository[Any]],
    kind: str,
    tenant_id: UUID,
    record_id: UUID,
    viewer: UUID | None,
    *,
    after: int,
    order: log.Order,
    limit: int,
    field: str | None,
) -> list[dict[str, Any]] | None:
    """Up to ``limit`` events of the record's history; None when ``viewer`` may not see
    the record (or it never existed). In one read transaction, so the visibility check
    and the events agree."""
    if await repo.fetch_visible(conn, tenant_id, record_id, viewer) is None:
        # Not (or no longer) there: a deleted record is shown to whoever could see it
        # when it was deleted, by the owner its deletion event recorded.
        deleted = await log.page(
            conn,
            tenant_id,
            viewer,
            kinds=(kind,),
            types=log.TypeFilter(exact=(f"{kind}.deleted",)),
            record=(kind, record_id),
            limit=1,
        )
        if not deleted:
            return None
    if field is None:
        types = log.TypeFilter(exact=tuple(f"{kind}.{a}" for a in ACTIONS))
        matching: list[ColumnElement[bool]] = []
    else:
        types = log.TypeFilter(exact=(f"{kind}.created", f"{kind}.updated"))
        matching = [_touching(kind, field)]
    # The record is visible: all of its history, whoever owned it at each change.
    return await log.page(
        conn,
        tenant_id,
        None,
        kinds=(kind,),
        types=types,
        record=(kind, record_id),
        after=after,
        order=order,
        limit=limit,
        matching=matching,
    )


async def record_history(
    access: TenantAccess,
    kind: str,
    record_id: UUID,
    *,
    limit: int | None,
    cursor: str | None,
    order: log.Order,
    field: str | None,
) -> Response:
    repo = TenantRepository.for_kind(kind)
    if repo is None:  # the app imports every domain, so every kind has its repository
        raise RuntimeError(f"no repository for {kind}")
    size = check_limit(limit)
    if field is not None and field not in (known := fields_of(repo)):
        raise invalid_field("field", f"a {kind} has no field {field!r}; fields: {', '.join(known)}")
    tenant_id, viewer = access.tenant.tenant_id, record_viewer(access)
    after = seq_cursor(cursor)
    await log.catch_up(access)
    events = await endpoints.read(
        access,
        lambda conn: read_history(
            conn,
            repo,
            kind,
            tenant_id,
            record_id,
            viewer,
            after=after,
            order=order,
            limit=size + 1,
            field=field,
        ),
    )
    if events is None:
        raise NotFound(f"No {kind} with id {record_id}.")
    more = len(events) > size
    events = events[:size]
    return json_response(
        {
            "record": {"kind": kind, "id": str(record_id)},
            "data": [entry(e, field) for e in events],
            "next_cursor": str(events[-1]["seq"]) if more else None,
        }
    )


# -- the routes: one per kind, each with its kind's read permission -----------------------
_DOC = (
    "Who changed which field of the {kind}, from what to what, and when (newest first by "
    "default). Encrypted fields show only that they changed. A deleted {kind} keeps its "
    "history for those who could see it when it was deleted."
)
# (kind, the URL's plural, which is also the catalogue object read, a note for the doc)
KINDS: tuple[tuple[str, str, str], ...] = (
    ("contact", "contacts", ""),
    ("account", "accounts", ""),
    ("opportunity", "opportunities", ""),
    ("lead", "leads", " A lead's score changes are its own entries."),
    ("case", "cases", " The case's calls, emails and notes are on its timeline."),
    (
        "activity",
        "activities",
        " Activities never change: their history is their creation (and their deletion "
        "with the record they belong to leaves no event).",
    ),
)


def _route(kind: str, plural: str) -> Callable[..., Awaitable[Response]]:
    async def get_history(
        record_id: UUID,
        access: TenantAccess,
        limit: LimitQuery = 50,
        cursor: SeqCursor = None,
        order: OrderQuery = "desc",
        field: str | None = None,
    ) -> Response:
        return await record_history(
            access, kind, record_id, limit=limit, cursor=cursor, order=order, field=field
        )

    # What differs per kind, as objects (this module's string annotations resolve in its
    # globals, which cannot hold one alias per kind): the path parameter's name, the
    # kind's read permission and its fields.
    get_history.__annotations__.update(
        record_id=Annotated[UUID, Path(alias=f"{kind}_id")],
        access=Annotated[TenantAccess, Depends(RequireTenant(plural, "read"))],
        field=Annotated[str | None, _field_query(kind)],
    )
    return get_history


for _kind, _plural, _note in KINDS:
    router.add_api_route(
        f"/v1/{_plural}/{{{_kind}_id}}/history",
        _route(_kind, _plural),
        methods=["GET"],
        name=f"get_{_kind}_history",
        response_model=HistoryPage,
        openapi_extra=problems(InvalidCursor, ValidationFailed),
        description=_DOC.format(kind=_kind) + _note,
    )
