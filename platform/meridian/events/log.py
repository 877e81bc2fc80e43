"""Reading a tenant's event log: the one query behind the events API, the live stream's
catch-up and the records' history, and ``catch_up``, which numbers what waits first.

Who sees which event: the caller's role must read the event's object (a contact's events
need ``contacts:read``), and a user whose record scope is limited sees the events of the
records in it only, by the same ``authz.scope`` predicate their lists use, applied to
the owner the record had when the event happened (so a deleted record's events stay
visible to exactly those who could see it). Events of kinds without owners (pipelines,
users, shares, webhooks) need the capability alone; sign-ins (kind ``auth``) and the
tenant's own events need ``audit:read``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

import asyncpg
import orjson
from sqlalchemy import ColumnElement, and_, false, func, or_, select

from authz.models import RECORD_KINDS
from authz.scope import visible_to
from meridian.crud.compiled import fetch, fetchrow
from meridian.errors import ValidationFailed
from meridian.events.models import EventOutbox
from meridian.events.outbox import NUMBER, NUMBER_BATCH
from sharding.errors import ResidencyError

if TYPE_CHECKING:
    from meridian.deps import TenantAccess

# Event kind -> the catalogue object whose read permission shows it.
OBJECT_OF_KIND: dict[str, str] = {
    "account": "accounts",
    "contact": "contacts",
    "opportunity": "opportunities",
    "lead": "leads",
    "lead_scoring_rule": "lead_scoring",
    "case": "cases",
    "field": "fields",
    "duplicate_rule": "duplicate_rules",
    "activity": "activities",
    "pipeline": "pipelines",
    "stage": "pipelines",
    "user": "users",
    "share": "shares",
    "role": "roles",
    "webhook": "webhooks",
    "tenant": "audit",
    "fulfilment": "fulfilment",
    # Imports and exports (their jobs, not the records they read or write).
    "export": "exports",
    "import": "imports",
    # Sign-ins name a user but are the audit's: users:read (every sales rep's) must not
    # show who signed in when.
    "auth": "audit",
}
# Kinds whose records have owners, so record scope applies to their events.
OWNED_KINDS = (*RECORD_KINDS, "activity")
TYPE_PATTERN = r"^[a-z_]+(\.[a-z_]+|\.\*)$"


def type_pattern(kinds: Iterable[str], actions: str = "[a-z_]+") -> str:
    """A regular expression (unanchored) of one event type or a whole kind
    (``contact.updated``, ``contact.*``) of ``kinds``: what the API's parameters and
    bodies that name event types promise in the OpenAPI document."""
    return rf"({'|'.join(sorted(kinds))})\.({actions}|\*)"


# Any event type or kind the log has.
ONE_TYPE = type_pattern(OBJECT_OF_KIND)
# The order of a page: by seq, oldest first (replays, the stream) or newest first.
Order = Literal["asc", "desc"]
MAX_TYPES = 20


@dataclass(frozen=True, slots=True)
class TypeFilter:
    """``type=contact.created,opportunity.*``: exact types and whole kinds."""

    exact: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.exact and not self.kinds

    def matches(self, type_: str) -> bool:
        return self.empty or type_ in self.exact or type_.split(".", 1)[0] in self.kinds

    @classmethod
    def parse(cls, raw: str | None) -> TypeFilter:
        if not raw:
            return cls()
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        if len(parts) > MAX_TYPES:
            raise ValidationFailed(f"type: at most {MAX_TYPES} types or kinds.")
        exact, kinds = [], []
        for part in parts:
            if not re.fullmatch(TYPE_PATTERN, part):
                raise ValidationFailed(
                    f"type: {part!r} is not an event type ('contact.updated') or a kind "
                    "('contact.*')."
                )
            kind, _, action = part.partition(".")
            if kind not in OBJECT_OF_KIND:
                raise ValidationFailed(
                    f"type: no events of kind {kind!r}; kinds: {', '.join(sorted(OBJECT_OF_KIND))}."
                )
            if action == "*":
                kinds.append(kind)
            else:
                exact.append(part)
        return cls(tuple(exact), tuple(kinds))


def readable_kinds(can: Callable[[str, str], bool]) -> tuple[str, ...]:
    """The event kinds a caller whose capabilities ``can`` answers may see."""
    return tuple(sorted(k for k, obj in OBJECT_OF_KIND.items() if can(obj, "read")))


def in_scope(tenant_id: UUID, viewer: UUID | None) -> ColumnElement[bool] | None:
    """What a scoped ``viewer`` sees of the log; None when everything."""
    if viewer is None:
        return None
    e = EventOutbox
    clauses: list[ColumnElement[bool]] = [e.record_kind.not_in(OWNED_KINDS)]
    for kind in OWNED_KINDS:
        shareable = kind if kind in RECORD_KINDS else None
        clauses.append(
            and_(
                e.record_kind == kind,
                visible_to(e.owner_id, e.record_id, shareable, tenant_id, viewer),
            )
        )
    return or_(*clauses)


def _criteria(
    tenant_id: UUID,
    viewer: UUID | None,
    kinds: Sequence[str],
    types: TypeFilter,
) -> list[ColumnElement[bool]]:
    e = EventOutbox
    where: list[ColumnElement[bool]] = [e.tenant_id == tenant_id]
    allowed = set(kinds)
    if not types.empty:
        wanted = [t for t in types.exact if t.split(".", 1)[0] in allowed]
        whole = [k for k in types.kinds if k in allowed]
        options: list[ColumnElement[bool]] = []
        if wanted:
            options.append(e.type.in_(wanted))
        if whole:
            options.append(e.record_kind.in_(whole))
        where.append(or_(*options) if options else false())
    elif set(OBJECT_OF_KIND) - allowed:
        where.append(e.record_kind.in_(sorted(allowed)) if allowed else false())
    scope = in_scope(tenant_id, viewer)
    if scope is not None:
        where.append(scope)
    return where


COLUMNS = (
    EventOutbox.seq,
    EventOutbox.id,
    EventOutbox.type,
    EventOutbox.record_kind,
    EventOutbox.record_id,
    EventOutbox.owner_id,
    EventOutbox.actor_type,
    EventOutbox.actor_id,
    EventOutbox.occurred_at,
    EventOutbox.data,
)


async def page(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    viewer: UUID | None,
    *,
    kinds: Sequence[str],
    types: TypeFilter = TypeFilter(),
    after: int = 0,
    limit: int,
    until: int | None = None,
    record: tuple[str, UUID] | None = None,
    since: datetime | None = None,
    before: datetime | None = None,
    order: Order = "asc",
    matching: Sequence[ColumnElement[bool]] = (),
) -> list[dict[str, Any]]:
    """Up to ``limit`` events after ``after`` (and up to ``until``), oldest first; with
    ``order="desc"`` newest first, ``after`` then being the seq the page continues below
    (0: from the newest). ``matching`` adds criteria on ``EventOutbox`` (the audit's
    types, a history's field)."""
    e = EventOutbox
    where = _criteria(tenant_id, viewer, kinds, types)
    where += matching
    if order == "asc":
        where.append(e.seq > after)
    elif after > 0:
        where.append(e.seq < after)
    if until is not None:
        where.append(e.seq <= until)
    if record is not None:
        where += [e.record_kind == record[0], e.record_id == record[1]]
    if since is not None:
        where.append(e.occurred_at >= since)
    if before is not None:
        where.append(e.occurred_at < before)
    sort = e.seq if order == "asc" else e.seq.desc()
    stmt = select(*COLUMNS).where(*where).order_by(sort).limit(limit)
    return [public(dict(r)) for r in await fetch(conn, stmt)]


async def bounds(conn: asyncpg.Connection, tenant_id: UUID) -> tuple[int, int]:
    """The oldest retained and the newest sequence number (0, 0 for an empty log)."""
    e = EventOutbox
    row = await fetchrow(
        conn,
        select(func.coalesce(func.min(e.seq), 0), func.coalesce(func.max(e.seq), 0)).where(
            e.tenant_id == tenant_id
        ),
    )
    assert row is not None
    return int(row[0]), int(row[1])


def public(row: dict[str, Any]) -> dict[str, Any]:
    """An outbox row as the API, the stream and webhooks show it."""
    data = row["data"]
    if isinstance(data, str):
        data = orjson.loads(data)
    return {
        "id": str(row["id"]),
        "seq": row["seq"],
        "type": row["type"],
        "occurred_at": row["occurred_at"].isoformat()
        if isinstance(row["occurred_at"], datetime)
        else row["occurred_at"],
        "actor": {"type": row["actor_type"], "id": row["actor_id"]},
        "record": {
            "kind": row["record_kind"],
            "id": str(row["record_id"]) if row["record_id"] is not None else None,
            "owner_id": str(row["owner_id"]) if row["owner_id"] is not None else None,
        },
        "data": data,
    }


def kinds_in(events: Iterable[dict[str, Any]]) -> set[str]:
    return {e["record"]["kind"] for e in events}


# -- numbering what waits ----------------------------------------------------------------
# Whether events wait for their numbers, in one statement (``e.tid``: the tenant, see
# ShardRouter.read_one) or inside a read transaction.
_WAITING_INNER = "SELECT EXISTS (SELECT 1 FROM event_pending WHERE tenant_id = e.tid) AS waiting"
_WAITING = "SELECT EXISTS (SELECT 1 FROM event_pending WHERE tenant_id = $1) AS waiting"


async def number(conn: asyncpg.Connection, tenant_id: UUID) -> int:
    """Number up to ``NUMBER_BATCH`` committed events of the tenant (``conn`` inside it,
    in a write transaction); how many."""
    return int(await conn.fetchval(NUMBER, tenant_id, NUMBER_BATCH) or 0)


async def catch_up(access: TenantAccess) -> None:
    """Number the tenant's committed events that wait, before a read of its log: the
    relay does it within moments anyway, but a client reads its own writes at once.
    Nothing waits (one indexed probe, no transaction) is the usual answer."""
    runtime, tenant = access.runtime, access.tenant
    tenant_id = tenant.tenant_id

    async def waiting_in(conn: asyncpg.Connection) -> asyncpg.Record | None:
        found: asyncpg.Record | None = await conn.fetchrow(_WAITING, tenant_id)
        return found

    row = await runtime.router.read_row(
        tenant,
        lambda: _WAITING_INNER,
        (),
        waiting_in,
        on_stale=runtime.refresh_tenant,
    )
    if row is None or not row["waiting"]:
        return
    try:
        while True:
            async with runtime.router.transaction(
                tenant, write=True, on_stale=runtime.refresh_tenant
            ) as session:
                conn = await session.connection()
                result = await conn.exec_driver_sql(NUMBER, (tenant_id, NUMBER_BATCH))
                numbered = int(result.scalar() or 0)
            if numbered < NUMBER_BATCH:
                return
    except ResidencyError as err:
        # A move has fenced the tenant (it numbered what waited when it did): the log
        # as it stands is complete.
        if not err.read_only:
            raise
