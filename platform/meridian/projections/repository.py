"""The summaries' SQL: computing them from the activities, and reading them.

Every write computes rows from the ``activity`` table in one statement (an INSERT ...
SELECT ... ON CONFLICT DO UPDATE), never by adding to what a row holds: applying it
twice, late or out of order gives the same row, which is what makes the at-least-once
event stream safe to consume. Concurrent computations of one row are ordered by their
statement time (``computed_at``): a computation only replaces an older one. That is
enough because a recomputation caused by an activity starts after the activity's
commit (its event is relayed only then), so the latest computation sees it.

A summary's "now" is the statement's time, ``statement_timestamp()``: the same clock
as the activities' commits, whichever worker runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import ColumnElement, Select, and_, func, literal, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from authz.scope import visible_to
from meridian.accounts.models import Account
from meridian.contacts.models import Contact
from meridian.crud.compiled import fetch, fetchrow
from meridian.crud.pagination import Cursor, Sort, after, order_by
from meridian.opportunities.models import Opportunity
from meridian.projections.models import (
    TYPE_COLUMNS,
    WINDOWS,
    InteractionSummary,
)

# The activity column that links an activity to a record of each kind. An account's
# activities include its contacts' and opportunities' (the account is recorded on the
# activity when it is created), as on its timeline.
LINK = {"contact": "contact_id", "account": "account_id", "opportunity": "opportunity_id"}
NOW = "statement_timestamp()"
_PAST = f"a.occurred_at <= {NOW}"
_FUTURE = f"a.occurred_at > {NOW}"


def _window(hours: int) -> str:
    return f"a.occurred_at > {NOW} - interval '{hours} hours' AND {_PAST}"


def _computed() -> list[tuple[str, str]]:
    """(column, SQL over the record's activities ``a``) of every computed column."""
    latest = "ORDER BY a.occurred_at DESC, a.id DESC"
    soonest = "ORDER BY a.occurred_at, a.id"
    task = f"a.type = 'task' AND {_FUTURE}"
    columns = [
        ("last_activity_at", f"max(a.occurred_at) FILTER (WHERE {_PAST})"),
        ("last_activity_type", f"(array_agg(a.type {latest}) FILTER (WHERE {_PAST}))[1]"),
        ("last_activity_id", f"(array_agg(a.id {latest}) FILTER (WHERE {_PAST}))[1]"),
    ]
    for window, hours in WINDOWS.items():
        within = _window(hours)
        for type_, plural in TYPE_COLUMNS.items():
            columns.append(
                (f"{plural}_{window}", f"count(*) FILTER (WHERE a.type = '{type_}' AND {within})")
            )
        columns.append((f"activities_{window}", f"count(*) FILTER (WHERE {within})"))
    # The row changes by time alone when a future activity comes due or one leaves a
    # window; a day at most, so a row whose activities went without an event (a deleted
    # contact's activities on its account's opportunities) is corrected within a day.
    edges = [f"min(a.occurred_at) FILTER (WHERE {_FUTURE})"] + [
        f"min(a.occurred_at) FILTER (WHERE {_window(h)}) + interval '{h} hours'"
        for h in WINDOWS.values()
    ]
    columns += [
        ("next_task_id", f"(array_agg(a.id {soonest}) FILTER (WHERE {task}))[1]"),
        ("next_task_due_at", f"min(a.occurred_at) FILTER (WHERE {task})"),
        ("computed_at", NOW),
        ("refresh_at", f"LEAST({', '.join(edges)}, {NOW} + interval '24 hours')"),
    ]
    return columns


COMPUTED = _computed()


def _upsert(kind: str, records: str) -> str:
    """The statement computing the summaries of the ``kind`` records that ``records``
    (a condition on ``a.<link>``) selects; records without activities get no row."""
    link = LINK[kind]
    names = ", ".join(name for name, _ in COMPUTED)
    values = ",\n       ".join(sql for _, sql in COMPUTED)
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name, _ in COMPUTED)
    # The kind and the link column come from LINK, not from input.
    return f"""
INSERT INTO interaction_summary AS s (tenant_id, record_kind, record_id, {names})
SELECT a.tenant_id, '{kind}', a.{link},
       {values}
  FROM activity a
 WHERE a.tenant_id = :tenant_id AND {records}
 GROUP BY a.tenant_id, a.{link}
ON CONFLICT (tenant_id, record_kind, record_id) DO UPDATE SET {updates}
 WHERE s.computed_at <= EXCLUDED.computed_at
"""  # noqa: S608


def _stale(kind: str) -> str:
    # The kind comes from LINK, not from input.
    return (
        "SELECT record_id FROM interaction_summary WHERE tenant_id = :tenant_id "  # noqa: S608
        f"AND record_kind = '{kind}' AND refresh_at <= {NOW} ORDER BY refresh_at LIMIT :batch"
    )


def _drop_empty_stale(kind: str) -> str:
    return (
        "DELETE FROM interaction_summary s WHERE s.tenant_id = :tenant_id "  # noqa: S608
        f"AND s.record_kind = '{kind}' AND s.refresh_at <= {NOW} AND NOT EXISTS ("
        "SELECT 1 FROM activity a WHERE a.tenant_id = :tenant_id "
        f"AND a.{LINK[kind]} = s.record_id)"
    )


# One statement per kind and purpose, built once.
RECOMPUTE_ONE = {k: text(_upsert(k, f"a.{LINK[k]} = :record_id")) for k in LINK}
RECOMPUTE_ALL = {k: text(_upsert(k, f"a.{LINK[k]} IS NOT NULL")) for k in LINK}
RECOMPUTE_STALE = {k: text(_upsert(k, f"a.{LINK[k]} IN ({_stale(k)})")) for k in LINK}
# A stale row whose record has no activities left (they went with a deleted record they
# were also linked to): nothing to compute it from, so it goes.
DROP_EMPTY_STALE = {k: text(_drop_empty_stale(k)) for k in LINK}
DROP_ONE = text(
    "DELETE FROM interaction_summary WHERE tenant_id = :tenant_id "
    "AND record_kind = :kind AND record_id = :record_id"
)
DROP_TENANT = text("DELETE FROM interaction_summary WHERE tenant_id = :tenant_id")


def _count(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


class InteractionWriter:
    """The summaries' writes in a shard transaction (the worker's, or a rebuild's).

    Not a ``TenantRepository``: a summary is derived data, and its writes append no
    events (the facts are the activities' own events; a summary's would only echo them,
    and the hourly refresh would add an event per row for the passing of time).
    """

    def __init__(self, session: AsyncSession, tenant_id: UUID) -> None:
        self.session = session
        self.tenant_id = tenant_id

    async def recompute(self, kind: str, record_id: UUID) -> int:
        """The record's summary from its activities; 0 rows when it has none (e.g. it
        was deleted with them) or a later computation already wrote it."""
        result = await self.session.execute(
            RECOMPUTE_ONE[kind], {"tenant_id": self.tenant_id, "record_id": record_id}
        )
        return _count(result)

    async def drop(self, kind: str, record_id: UUID) -> int:
        result = await self.session.execute(
            DROP_ONE, {"tenant_id": self.tenant_id, "kind": kind, "record_id": record_id}
        )
        return _count(result)

    async def rebuild(self) -> dict[str, int]:
        """Every summary of the tenant afresh: rows go, and come back from the activities."""
        await self.session.execute(DROP_TENANT, {"tenant_id": self.tenant_id})
        done: dict[str, int] = {}
        for kind in LINK:
            result = await self.session.execute(RECOMPUTE_ALL[kind], {"tenant_id": self.tenant_id})
            done[kind] = _count(result)
        return done

    async def drop_empty_stale(self, kind: str) -> int:
        result = await self.session.execute(DROP_EMPTY_STALE[kind], {"tenant_id": self.tenant_id})
        return _count(result)

    async def refresh_stale(self, kind: str, batch: int) -> int:
        """Up to ``batch`` rows of ``kind`` whose time has come recomputed (the most
        overdue first); the number written."""
        result = await self.session.execute(
            RECOMPUTE_STALE[kind], {"tenant_id": self.tenant_id, "batch": batch}
        )
        return _count(result)


# -- reads, on the raw read path (meridian.crud.endpoints.read) ----------------------------
S = InteractionSummary
# The summary's columns as the API shows them (the key and refresh_at are not).
SUMMARY_COLUMNS = [
    c for c in S.__table__.columns if c.key not in ("tenant_id", "record_kind", "record_id")
]
RECORDS: dict[str, Any] = {"contact": Contact, "account": Account, "opportunity": Opportunity}


def display_name(kind: str) -> ColumnElement[Any]:
    """What names a record in a summary: an account's or opportunity's name, a
    contact's first and last name."""
    if kind == "contact":
        return func.concat_ws(" ", Contact.first_name, Contact.last_name)
    model = RECORDS[kind]
    name: ColumnElement[Any] = model.name
    return name


def _record_columns(kind: str) -> list[ColumnElement[Any]]:
    model = RECORDS[kind]
    return [
        model.id.label("record_id"),
        display_name(kind).label("record_name"),
        model.owner_id.label("record_owner_id"),
    ]


def _joined(kind: str, tenant_id: UUID, viewer: UUID | None) -> tuple[Any, list[Any]]:
    """The kind's records joined to their summaries, and the tenant and scope criteria:
    the scope is the records' own (``authz.scope.visible_to``), as in their lists."""
    model = RECORDS[kind]
    where: list[Any] = [model.tenant_id == tenant_id]
    if viewer is not None:
        where.append(visible_to(model.owner_id, model.id, kind, tenant_id, viewer))
    return model, where


async def fetch_one(
    conn: asyncpg.Connection, tenant_id: UUID, kind: str, record_id: UUID, viewer: UUID | None
) -> dict[str, Any] | None:
    """The record's name and summary (summary columns null when it has none yet); None
    when the record does not exist in the tenant or the viewer may not see it."""
    model, where = _joined(kind, tenant_id, viewer)
    summary = [c.label(c.key) for c in SUMMARY_COLUMNS]
    stmt = (
        select(*_record_columns(kind), *summary)
        .select_from(model)
        .outerjoin(
            S,
            and_(
                S.tenant_id == model.tenant_id,
                S.record_kind == literal(kind),
                S.record_id == model.id,
            ),
        )
        .where(*where, model.id == record_id)
    )
    row = await fetchrow(conn, stmt)
    return dict(row) if row is not None else None


def page_statement(
    tenant_id: UUID,
    kind: str,
    viewer: UUID | None,
    *,
    where: Sequence[ColumnElement[bool]],
    sort: Sort,
    limit: int,
    cursor: Cursor | None,
) -> Select[Any]:
    """Up to ``limit + 1`` summaries of ``kind`` (with their records' names) in ``sort``
    order, after ``cursor``: the summary's indexes lead, the record is joined by key."""
    model, scope = _joined(kind, tenant_id, viewer)
    stmt = (
        select(
            *_record_columns(kind),
            *[c.label(c.key) for c in SUMMARY_COLUMNS],
            sort.column.label("sort_key"),
        )
        .select_from(S)
        .join(model, and_(model.tenant_id == S.tenant_id, model.id == S.record_id))
        .where(S.tenant_id == tenant_id, S.record_kind == kind, *scope, *where)
    )
    if cursor is not None:
        stmt = stmt.where(after(sort, S.record_id, cursor))
    return stmt.order_by(*order_by(sort, S.record_id)).limit(limit + 1)


async def fetch_page(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    kind: str,
    viewer: UUID | None,
    *,
    where: Sequence[ColumnElement[bool]],
    sort: Sort,
    limit: int,
    cursor: Cursor | None,
) -> list[dict[str, Any]]:
    stmt = page_statement(
        tenant_id, kind, viewer, where=where, sort=sort, limit=limit, cursor=cursor
    )
    return [dict(r) for r in await fetch(conn, stmt)]
