"""The transactional outbox: every write's events, in the write's own transaction.

The one write path (``meridian.crud.repository.TenantRepository``'s ``insert``,
``update`` and ``delete``, and the few writes a domain makes itself) calls ``record``
with what changed; the events wait in the session and are appended to the tenant's
``event_outbox`` by one statement just before the transaction commits (a ``before_commit``
listener on every shard session), so the record and its events commit or vanish together,
whichever flow opened the transaction.

That statement (``meridian_append_events``, in the shard migration) takes the tenant's
``event_sequence`` row and numbers the events after it. The row stays locked until the
commit, which comes right after: two writers of one tenant get their numbers in commit
order, and a rolled-back write gives its numbers back. Readers can therefore treat a
sequence number as a gapless cursor. The price is that a tenant's writes serialise on
their commit, not on their work: the lock is taken by the last statement.

Sensitive values never enter an event: an encrypted field (``<field>_enc``) and a
repository's hidden columns (a password hash) are named as changed, without a value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from meridian.ids import new_id
from meridian.web.responses import dumps
from sharding.router import ShardSession

_PENDING = "outbox_events"
_ACTOR = "outbox_actor"
# Columns that say nothing a reader of events needs: bookkeeping, and the blind indexes
# and key versions of encrypted fields (whose change shows as the field's).
_SKIPPED = frozenset({"tenant_id", "version", "updated_at", "created_at", "enc_version"})
_SEALED_SUFFIX = "_enc"
_INDEX_SUFFIX = "_bidx"

# Sent as driver SQL on the session's connection: the ORM's execute costs more Python
# than the statement costs the database, and this runs on every write.
APPEND = "SELECT meridian_append_events($1, $2, $3, $4::jsonb)"


@dataclass(frozen=True, slots=True)
class EventActor:
    """Who made a change: a user, an OAuth client acting for the tenant, or the
    platform itself (onboarding, a background job)."""

    type: str  # "user" | "client" | "system"
    id: str | None = None


SYSTEM = EventActor("system")


def act_as(session: AsyncSession, actor: EventActor) -> None:
    """Name who makes the changes of ``session``'s transaction."""
    session.info[_ACTOR] = actor


def record(
    session: AsyncSession,
    tenant_id: UUID,
    type_: str,
    kind: str,
    record_id: UUID | None,
    *,
    owner_id: UUID | None = None,
    record: Mapping[str, Any] | None = None,
    changes: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Queue an event in ``session``'s transaction; appended when it commits."""
    data: dict[str, Any] = {}
    if record is not None:
        data["record"] = dict(record)
    if changes is not None:
        data["changes"] = dict(changes)
    if extra:
        data.update(extra)
    pending: list[dict[str, Any]] = session.info.setdefault(_PENDING, [])
    pending.append(
        {
            "tenant_id": tenant_id,
            "id": str(new_id()),
            "type": type_,
            "kind": kind,
            "record_id": str(record_id) if record_id is not None else None,
            "owner_id": str(owner_id) if owner_id is not None else None,
            "data": data,
        }
    )


def pending(session: AsyncSession) -> list[dict[str, Any]]:
    """The events queued in ``session`` and not yet appended (tests, derived events)."""
    queued: list[dict[str, Any]] = session.info.get(_PENDING, [])
    return queued


# -- what an event says of a row ---------------------------------------------------
def field_of(column: str) -> str | None:
    """The API field a stored column is, for events: ``email_enc`` is ``email``; a
    blind index or bookkeeping column is none."""
    if column in _SKIPPED or column.endswith(_INDEX_SUFFIX):
        return None
    if column.endswith(_SEALED_SUFFIX):
        return column[: -len(_SEALED_SUFFIX)]
    return column


def is_secret(column: str, hidden: Iterable[str]) -> bool:
    """Whether a column's value must never appear in an event (only that it changed)."""
    return column.endswith(_SEALED_SUFFIX) or (column in hidden and column != "tenant_id")


def snapshot(row: Mapping[Any, Any], hidden: Iterable[str]) -> dict[str, Any]:
    """The row as events show it: every field but secrets (serialised once, when the
    transaction's events are appended)."""
    hidden = frozenset(hidden)
    return {
        k: v
        for k, v in row.items()
        if k not in hidden
        and not k.endswith(_SEALED_SUFFIX)
        and not k.endswith(_INDEX_SUFFIX)
        and k not in ("tenant_id", "enc_version")
    }


def changes_between(
    before: Mapping[str, Any], after: Mapping[str, Any], hidden: Iterable[str]
) -> dict[str, Any]:
    """Each field whose value differs: ``{"old", "new"}``, or ``{"changed": true}`` for a
    secret. An encrypted field is compared by its blind index when it has one (a new
    ciphertext of the same value is no change), else by its ciphertext."""
    hidden = frozenset(hidden)
    out: dict[str, Any] = {}
    for column, old in before.items():
        field = field_of(column)
        if field is None or column not in after:
            continue
        new = after[column]
        if column.endswith(_SEALED_SUFFIX):
            index = f"{field}{_INDEX_SUFFIX}"
            if index in before and index in after:
                old, new = before[index], after[index]
        if _same(old, new):
            continue
        if is_secret(column, hidden):
            out[field] = {"changed": True}
        else:
            out[field] = {"old": old, "new": new}
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, memoryview):
        a = bytes(a)
    if isinstance(b, memoryview):
        b = bytes(b)
    return bool(a == b)


# -- appending at commit ---------------------------------------------------------------
def _append(session: Session) -> None:
    """``before_commit`` of every shard session: one statement appends what it queued."""
    queued: list[dict[str, Any]] | None = session.info.pop(_PENDING, None)
    if not queued:
        return
    actor: EventActor = session.info.get(_ACTOR, SYSTEM)
    tenant_id = queued[0]["tenant_id"]
    if any(e["tenant_id"] != tenant_id for e in queued):
        raise RuntimeError("a shard transaction queued events of more than one tenant")
    events = [{k: v for k, v in e.items() if k != "tenant_id"} for e in queued]
    session.connection().exec_driver_sql(
        APPEND, (tenant_id, actor.type, actor.id, dumps(events).decode())
    )


def _discard(session: Session) -> None:
    session.info.pop(_PENDING, None)


event.listen(ShardSession, "before_commit", _append)
event.listen(ShardSession, "after_rollback", _discard)
