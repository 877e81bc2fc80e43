"""Record scope: which records a user may see, as SQL.

A user sees the records they own, those owned by anyone below them in the reporting
line (``user_closure``, which holds every user with itself at depth 0), and records
shared with them or with a team they belong to (a share to a manager covers the
manager and everyone below). The same predicate filters single-record reads and list
queries, so a record is in a user's list exactly when the user can open it; nothing is
fetched first and filtered in Python.

Every subquery names ``tenant_id``: RLS hides other tenants' rows but does not route,
and on Citus a subquery without the tenant filter would fan out to every shard.

Shapes, and why (figures: ``loadtests/scope_bench.py``):

- ``visible_to`` is the predicate: ``owner_id IN (subordinates)``, uncorrelated, so
  PostgreSQL hashes the user's subtree once per statement, ``OR EXISTS`` a share of this
  record (a probe of the record's shares by primary key, per row). A list walks its sort
  index and keeps the rows that pass: cheap when the user sees a good share of the
  records, as managers do.
- A user with no reports sees few records; walking the sort index would read
  thousands of rows to find a page of them. ``visible_to_leaf`` says the same thing
  for such a user (their own records, and shares) in a form PostgreSQL answers from
  the owner and primary-key indexes. A list runs both shapes as two branches of one
  statement, each guarded by ``has_reports`` (evaluated once; the other branch never
  runs), so the choice is made per execution from the closure itself, whatever plan a
  prepared statement settled on, and never from a cached hint that could be stale.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import ColumnElement, Select, any_, exists, func, or_, select, union_all
from sqlalchemy.orm import InstrumentedAttribute

from authz.models import RECORD_KINDS, RecordShare, UserClosure

Column = InstrumentedAttribute[Any] | ColumnElement[Any]
# A tenant or user id: a value, or a bound parameter (for statements compiled once).
Value = UUID | ColumnElement[Any]


def subordinates(tenant_id: Value, user_id: Value) -> Select[Any]:
    """``user_id`` and everyone below them (a SELECT of one column)."""
    return select(UserClosure.descendant_id).where(
        UserClosure.tenant_id == tenant_id, UserClosure.ancestor_id == user_id
    )


def superiors(tenant_id: Value, user_id: Value) -> Select[Any]:
    """``user_id`` and everyone above them: the teams the user belongs to."""
    return select(UserClosure.ancestor_id).where(
        UserClosure.tenant_id == tenant_id, UserClosure.descendant_id == user_id
    )


def has_reports(tenant_id: Value, user_id: Value) -> ColumnElement[bool]:
    """Whether anyone reports to ``user_id`` (uncorrelated: evaluated once)."""
    return exists(
        select(UserClosure.descendant_id).where(
            UserClosure.tenant_id == tenant_id,
            UserClosure.ancestor_id == user_id,
            UserClosure.depth > 0,
        )
    )


def shared_with(tenant_id: Value, record_kind: str, user_id: Value) -> Any:
    """Ids of the records of ``record_kind`` shared with the user or one of its teams.

    Two branches, so each reads its own index (``ix_record_share_user``/``_team``)
    instead of one scan of the tenant's shares testing an OR.
    """
    to_user = select(RecordShare.record_id).where(
        RecordShare.tenant_id == tenant_id,
        RecordShare.user_id == user_id,
        RecordShare.record_kind == record_kind,
    )
    to_team = select(RecordShare.record_id).where(
        RecordShare.tenant_id == tenant_id,
        RecordShare.team_id.in_(superiors(tenant_id, user_id)),
        RecordShare.record_kind == record_kind,
    )
    return union_all(to_user, to_team)


def _check_kind(record_kind: str | None) -> None:
    if record_kind is not None and record_kind not in RECORD_KINDS:
        raise ValueError(f"records of kind {record_kind!r} cannot be shared")


def visible_to(
    owner_col: Column,
    record_id_col: Column,
    record_kind: str | None,
    tenant_id: Value,
    user_id: Value,
) -> ColumnElement[bool]:
    """The predicate "``user_id`` may see this record", to put in a WHERE clause.

    ``record_kind`` names the kind in ``record_share`` (account, contact, opportunity);
    None for kinds that cannot be shared (activities), whose scope is ownership only.
    Records without an owner are visible through shares only.
    """
    _check_kind(record_kind)
    owned: ColumnElement[bool] = owner_col.in_(subordinates(tenant_id, user_id))
    if record_kind is None:
        return owned
    shared = exists(
        select(RecordShare.id).where(
            RecordShare.tenant_id == tenant_id,
            RecordShare.record_id == record_id_col,
            RecordShare.record_kind == record_kind,
            or_(
                RecordShare.user_id == user_id,
                RecordShare.team_id.in_(superiors(tenant_id, user_id)),
            ),
        )
    )
    return or_(owned, shared)


def visible_to_leaf(
    owner_col: Column,
    record_id_col: Column,
    record_kind: str | None,
    tenant_id: Value,
    user_id: Value,
) -> ColumnElement[bool]:
    """``visible_to`` for a user without reports, and only for one: guard it with
    ``~has_reports``. Equalities and ``= ANY(ARRAY(...))`` let PostgreSQL combine the
    owner index and the primary key (a BitmapOr) instead of scanning the sort order."""
    _check_kind(record_kind)
    owned: ColumnElement[bool] = owner_col == user_id
    if record_kind is None:
        return owned
    shared_ids = func.array(shared_with(tenant_id, record_kind, user_id).scalar_subquery())
    shared: ColumnElement[bool] = record_id_col == any_(shared_ids)
    return or_(owned, shared)
