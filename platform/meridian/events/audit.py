"""The tenant's audit trail (``GET /v1/audit``, permission ``audit:read``): who signed in
or failed to, who changed roles, users, shares and webhooks, who deleted or exported
what — read from the tenant's event log, so kept exactly as long as the log (the
tenant's event retention) and never written twice.

``AUDITED_KINDS`` and ``AUDITED_ACTIONS`` below are the one definition of what the
audit shows: every event of an audited kind, and the deletions and exports of any kind
(``*.exported`` events are picked up whenever a kind starts to emit them).

The caller sees what ``GET /v1/events`` would show it of those events (its role's
readable kinds, its record scope): a tenant admin sees all of them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, or_
from starlette.responses import Response

from meridian.crud import endpoints
from meridian.crud.http import LimitQuery
from meridian.crud.pagination import check_limit
from meridian.crud.schemas import IsoDateTime
from meridian.deps import CanReadAudit, record_viewer
from meridian.errors import InvalidCursor, ValidationFailed, invalid_field
from meridian.events import log
from meridian.events.history import OrderQuery, SeqCursor, seq_cursor
from meridian.events.models import EventOutbox
from meridian.events.schemas import EventRead
from meridian.web.openapi import problems
from meridian.web.responses import json_response

# Every event of these kinds is audited:
AUDITED_KINDS: tuple[str, ...] = (
    "auth",  # auth.signed_in, auth.sign_in_failed (the token endpoint's user sign-ins)
    "role",  # role.created|updated|deleted, with the permissions before and after
    "user",  # user.created|updated: role, manager, activation, name, password changed
    "share",  # share.created (granted), share.deleted (revoked)
    "webhook",  # webhook.created|updated|deleted
    "tenant",  # the tenant's own settings
    "export",  # export.requested|completed|failed|downloaded (meridian.transfers)
    "import",  # import.requested|completed|failed|cancelled
)
# ... and these actions of every kind: a record's deletion, an export, a merge and its undo.
AUDITED_ACTIONS: tuple[str, ...] = ("deleted", "exported", "merged", "unmerged")


def is_audited(type_: str) -> bool:
    """Whether an event of type ``type_`` is part of the audit trail."""
    kind, _, action = type_.partition(".")
    return kind in AUDITED_KINDS or action in AUDITED_ACTIONS


def audited() -> ColumnElement[bool]:
    """``is_audited`` as a criterion on the log."""
    e = EventOutbox
    return or_(
        e.record_kind.in_(AUDITED_KINDS),
        *(e.type.like(f"%.{action}") for action in AUDITED_ACTIONS),
    )


router = APIRouter(prefix="/v1/audit", tags=["audit"])

# What ``parse_types`` takes, stated in the document: an audited kind's types or all of
# it, any kind's audited actions or all of them (contact.*: a contact's deletions and
# exports).
_AUDITED_TYPE = (
    log.type_pattern(AUDITED_KINDS)
    + "|"
    + log.type_pattern(log.OBJECT_OF_KIND, "|".join(AUDITED_ACTIONS))
)
AuditTypeQuery = Annotated[
    str | None,
    Query(
        description="Comma-separated audited types (auth.sign_in_failed) or kinds "
        f"(role.*; contact.* is a contact's deletions and exports), at most {log.MAX_TYPES}.",
        pattern=rf"^({_AUDITED_TYPE})(,({_AUDITED_TYPE})){{0,{log.MAX_TYPES - 1}}}$",
    ),
]
ActorQuery = Annotated[
    str | None,
    Query(
        description="Only what this actor did: a user's id or an OAuth client's id.",
        max_length=255,
        pattern=r"^[!-~]+$",
    ),
]


class AuditPage(BaseModel):
    data: list[EventRead]
    next_cursor: str | None = Field(description="Set when more events follow.")


def parse_types(raw: str | None) -> log.TypeFilter:
    types = log.TypeFilter.parse(raw)
    outside = [t for t in types.exact if not is_audited(t)]
    if outside:
        raise invalid_field(
            "type",
            f"not audited: {', '.join(outside)}; the audit holds every event of "
            f"{', '.join(k + '.*' for k in AUDITED_KINDS)} and "
            f"{', '.join('*.' + a for a in AUDITED_ACTIONS)}",
        )
    return types


@router.get("", response_model=AuditPage, openapi_extra=problems(InvalidCursor, ValidationFailed))
async def list_audit_events(
    access: CanReadAudit,
    type: AuditTypeQuery = None,
    actor_id: ActorQuery = None,
    since: Annotated[
        IsoDateTime | None, Query(description="Inclusive lower bound (with a time zone).")
    ] = None,
    until: Annotated[
        IsoDateTime | None, Query(description="Exclusive upper bound (with a time zone).")
    ] = None,
    cursor: SeqCursor = None,
    order: OrderQuery = "desc",
    limit: LimitQuery = 50,
) -> Response:
    """The tenant's audit trail, newest first by default: sign-ins (successful and
    failed), role, user, share and webhook changes, deletions and exports. Events are
    shaped as in /v1/events."""
    types = parse_types(type)
    size = check_limit(limit)
    matching: list[ColumnElement[bool]] = [audited()]
    if actor_id is not None:
        matching.append(EventOutbox.actor_id == actor_id)
    after = seq_cursor(cursor)
    kinds = log.readable_kinds(access.can)
    tenant_id, viewer = access.tenant.tenant_id, record_viewer(access)
    await log.catch_up(access)
    rows = await endpoints.read(
        access,
        lambda conn: log.page(
            conn,
            tenant_id,
            viewer,
            kinds=kinds,
            types=types,
            after=after,
            limit=size + 1,
            since=since,
            before=until,
            order=order,
            matching=matching,
        ),
    )
    more = len(rows) > size
    rows = rows[:size]
    return json_response({"data": rows, "next_cursor": str(rows[-1]["seq"]) if more else None})
