"""The transactional outbox: every write's events, in the write's own transaction.

The one write path (``meridian.crud.repository.TenantRepository``'s ``insert``,
``update`` and ``delete``, and the few writes a domain makes itself) calls ``record``
with what changed; the events wait in the session and are inserted into the tenant's
``event_pending`` by one statement just before the transaction commits (a
``before_commit`` listener on every shard session), so the record and its events commit
or vanish together, whichever flow opened the transaction.

A write only inserts: it takes no lock another write of the tenant waits for. Events get
their ``seq`` afterwards, from ``number`` (the shard function ``meridian_number_events``):
under the tenant's counter row it moves the committed events to ``event_outbox``,
numbered after the last, in ``pos`` order. Numbers are therefore gapless and in the order
events became visible, which is all a cursor needs: a reader that has seen N has seen
every event numbered before N, and nothing can be numbered before N later. A record's
events stay in the order of its writes: a later write of the record waits for the earlier
one's row lock, so it inserts its events (and draws their ``pos``) after that commit.
The relay numbers before it publishes; readers of the log number first what waits
(``meridian.events.log.catch_up``), so a client reads its own writes.

Sensitive values never enter an event: an encrypted field (``<field>_enc``) and a
repository's hidden columns (a password hash) are named as changed, without a value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from uuid import UUID

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from meridian.encryption.fields import is_sealed
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
_CUSTOM = "custom"

_COLUMNS = "tenant_id, id, type, record_kind, record_id, owner_id, actor_type, actor_id, data"
_PER_ROW = 9
# Rows per INSERT: a statement takes at most 32,767 parameters.
_CHUNK = 1000
# The numberer's batch: how many events one call moves to the log.
NUMBER_BATCH = 1000
NUMBER = "SELECT meridian_number_events($1, $2)"
# Everything that waits, at once: a move runs it on the source under its fence.
SETTLE = "SELECT meridian_number_events($1, NULL)"


@lru_cache(maxsize=64)
def _insert(rows: int) -> str:
    """A multi-row INSERT of ``rows`` events. Sent as driver SQL on the session's
    connection: the ORM's execute costs more Python than the statement costs the
    database, and this runs on every write. VALUES rows, not INSERT ... SELECT, which
    Citus would run through COPY, refused by row-level security."""
    values = ", ".join(
        "("
        + ", ".join(f"${r * _PER_ROW + c + 1}" for c in range(_PER_ROW - 1))
        + f", ${r * _PER_ROW + _PER_ROW}::jsonb)"
        for r in range(rows)
    )
    return f"INSERT INTO event_pending ({_COLUMNS}) VALUES {values}"  # noqa: S608


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
            "id": new_id(),
            "type": type_,
            "kind": kind,
            "record_id": record_id,
            "owner_id": owner_id,
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
    out = {
        k: v
        for k, v in row.items()
        if k not in hidden
        and not k.endswith(_SEALED_SUFFIX)
        and not k.endswith(_INDEX_SUFFIX)
        and k not in ("tenant_id", "enc_version")
    }
    custom = out.get(_CUSTOM)
    if isinstance(custom, dict) and any(is_sealed(v) for v in custom.values()):
        # A sensitive custom field's ciphertext stays out, as a sealed column does.
        out[_CUSTOM] = {k: v for k, v in custom.items() if not is_sealed(v)}
    return out


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
        if column == _CUSTOM and isinstance(old, dict) and isinstance(new, dict):
            out.update(_custom_changes(old, new))
            continue
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


def _custom_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A record's custom fields, each its own change (``custom.<name>``); a sensitive
    one's only that it changed (an unchanged value keeps its ciphertext, so a new one is
    a change)."""
    out: dict[str, Any] = {}
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        key = f"{_CUSTOM}.{name}"
        out[key] = {"changed": True} if is_sealed(a) or is_sealed(b) else {"old": a, "new": b}
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, memoryview):
        a = bytes(a)
    if isinstance(b, memoryview):
        b = bytes(b)
    return bool(a == b)


# -- appending at commit ---------------------------------------------------------------
def _append(session: Session) -> None:
    """``before_commit`` of every shard session: one statement inserts what it queued."""
    queued: list[dict[str, Any]] | None = session.info.pop(_PENDING, None)
    if not queued:
        return
    actor: EventActor = session.info.get(_ACTOR, SYSTEM)
    tenant_id = queued[0]["tenant_id"]
    if any(e["tenant_id"] != tenant_id for e in queued):
        raise RuntimeError("a shard transaction queued events of more than one tenant")
    connection = session.connection()
    for start in range(0, len(queued), _CHUNK):
        chunk = queued[start : start + _CHUNK]
        params: list[Any] = []
        for e in chunk:
            params += (
                tenant_id,
                e["id"],
                e["type"],
                e["kind"],
                e["record_id"],
                e["owner_id"],
                actor.type,
                actor.id,
                dumps(e["data"]).decode(),
            )
        connection.exec_driver_sql(_insert(len(chunk)), tuple(params))


def _discard(session: Session) -> None:
    session.info.pop(_PENDING, None)


event.listen(ShardSession, "before_commit", _append)
event.listen(ShardSession, "after_rollback", _discard)
