"""Search rules: what a query asks for, what a page's cursor holds, and keeping the index.

- The index follows every write of the five kinds in the write's own transaction
  (``keep_entry``, a ``meridian.crud.hooks`` callback registered when this module is
  imported, as it is by the app): new records' entries are written as the transaction
  commits, all in one statement; an update that changes none of the fields an entry is
  made of (nor the owner) leaves it alone; a deletion takes it away.
- A query's words are folded and split by the database, as the entries' are
  (``repository.terms``); a query that looks like an email, a phone number or a tax id
  is also compared exactly with those sealed fields, through their blind indexes.
- ``rebuild``: a tenant's entries (or every tenant's) computed again from its records.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import event, or_, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from meridian.crud import hooks
from meridian.crud.pagination import filters_digest
from meridian.crud.schemas import EMAIL_PATTERN, PHONE_PATTERN
from meridian.encryption.fields import SENSITIVE
from meridian.encryption.schemas import TAX_ID_PATTERN
from meridian.errors import InvalidCursor, invalid_field
from meridian.search.models import KINDS
from meridian.search.repository import (
    SOURCES,
    WRITE_MANY,
    Position,
    SearchIndex,
    indexed_columns,
)
from sharding.router import OnStale, ShardRouter, ShardSession
from tenancy.context import TenantContext, TenantStatus
from tenancy.models import DirectoryEntry, Tenant

MAX_QUERY = 200
# Words of one query (a hyphenated word counts as itself and each of its parts).
MAX_WORDS = 20


# -- the index follows the records ---------------------------------------------------------
# New records whose entries are written when their transaction commits, per (tenant,
# kind): one statement for all of them (a batch, an import's chunk) rather than one per
# record. A record rolled back meanwhile (a failed batch item's savepoint) is simply not
# found by that statement.
_NEW = "meridian.search.new"


async def keep_entry(session: AsyncSession, tenant: TenantContext, written: hooks.Written) -> None:
    """The record's entry, in the transaction of its write."""
    kind = written.kind
    if kind not in SOURCES:
        return
    if written.action == "created":
        new: dict[tuple[UUID, str], set[UUID]] = session.info.setdefault(_NEW, {})
        new.setdefault((tenant.tenant_id, kind), set()).add(written.record_id)
        return
    index = SearchIndex(session, tenant.tenant_id)
    if written.action == "deleted":
        _not_new(session, tenant.tenant_id, kind, written.record_id)
        await index.forget(kind, written.record_id)
        return
    if written.changes is not None and not indexed_columns(kind) & written.changes.keys():
        return  # nothing the entry shows or is found by changed
    # Written now, as the record is; a record new in this transaction is then done.
    _not_new(session, tenant.tenant_id, kind, written.record_id)
    await index.write(kind, written.record_id)


def _not_new(session: AsyncSession, tenant_id: UUID, kind: str, record_id: UUID) -> None:
    new: dict[tuple[UUID, str], set[UUID]] | None = session.info.get(_NEW)
    if new is not None:
        new.get((tenant_id, kind), set()).discard(record_id)


def _write_new(session: Session) -> None:
    """``before_commit`` of every shard session: the entries of its new records."""
    new: dict[tuple[UUID, str], set[UUID]] | None = session.info.pop(_NEW, None)
    for (tenant_id, kind), record_ids in (new or {}).items():
        if record_ids:
            session.execute(
                WRITE_MANY[kind], {"tenant_id": tenant_id, "record_ids": list(record_ids)}
            )


def _forget_new(session: Session) -> None:
    session.info.pop(_NEW, None)


hooks.on_write("search", keep_entry)
event.listen(ShardSession, "before_commit", _write_new)
event.listen(ShardSession, "after_rollback", _forget_new)


# -- a query -------------------------------------------------------------------------------
def parse_kinds(raw: str | None) -> tuple[str, ...]:
    """``?kinds=contact,lead`` in the index's order (the router's pattern has checked
    each name); every kind without it."""
    if raw is None:
        return KINDS
    wanted = {part.strip() for part in raw.split(",")}
    unknown = sorted(wanted - set(KINDS))
    if unknown:
        raise invalid_field(
            "kinds", f"unknown kind {unknown[0]!r}; kinds: {', '.join(KINDS)}", "enum"
        )
    return tuple(kind for kind in KINDS if kind in wanted)


def check_words(found: Sequence[str]) -> list[str]:
    if not found:
        raise invalid_field("q", "nothing to search for: the query needs a letter or a digit")
    if len(found) > MAX_WORDS:
        raise invalid_field("q", f"at most {MAX_WORDS} words")
    return list(found)


_EMAIL = re.compile(EMAIL_PATTERN)
_PHONE = re.compile(PHONE_PATTERN)
_TAX_ID = re.compile(TAX_ID_PATTERN)
# Fewer digits than this is a word of a name ("Suite 12"), not a tax id.
_TAX_ID_DIGITS = 6


def identifiers_in(q: str) -> dict[str, str]:
    """The sealed fields ``q`` could be the exact value of (field → value)."""
    value = q.strip()
    found: dict[str, str] = {}
    if _EMAIL.fullmatch(value):
        found["email"] = value
    if _PHONE.fullmatch(value):
        found["phone"] = value
    if _TAX_ID.fullmatch(value) and sum(ch.isdigit() for ch in value) >= _TAX_ID_DIGITS:
        found["tax_id"] = value
    return found


def sealed_fields(kinds: Sequence[str], fields: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Of ``kinds``, those with sealed ``fields`` (kind → its fields among them)."""
    out = {kind: tuple(f for f in SENSITIVE.get(kind, ()) if f in fields) for kind in kinds}
    return {kind: found for kind, found in out.items() if found}


# -- its pages -----------------------------------------------------------------------------
def digest(tenant_id: UUID, words: Sequence[str], kinds: Sequence[str], identified: str) -> str:
    """What a cursor is bound to: the tenant, the query's words, the kinds searched and
    the sealed values searched (by their blind index: ``identified``, never the value)."""
    return filters_digest(
        tenant_id, {"search": " ".join(words), "kinds": ",".join(kinds), "ids": identified}
    )


def encode_cursor(row: Mapping[str, Any], bound_to: str) -> str:
    raw = orjson.dumps([row["rank"], row["kind"], str(row["record_id"]), bound_to])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(token: str, bound_to: str) -> Position:
    try:
        padded = token + "=" * (-len(token) % 4)
        rank, kind, record_id, dig = orjson.loads(base64.urlsafe_b64decode(padded))
        position = Position(float(rank), str(kind), UUID(str(record_id)))
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise InvalidCursor("The cursor is malformed.") from exc
    if dig != bound_to:
        raise InvalidCursor("The cursor was issued for a different query.")
    if not math.isfinite(position.rank) or position.kind not in KINDS:
        raise InvalidCursor("The cursor is malformed.")
    return position


# -- rebuilding ----------------------------------------------------------------------------
# A rebuild is an operator's command over a whole tenant, not a request: its statements
# may take longer than the shards' per-statement limit.
REBUILD_STATEMENT_TIMEOUT = text("SET LOCAL statement_timeout = '15min'")


@dataclass(frozen=True, slots=True)
class Platform:
    """What a rebuild uses of the platform: the tenants (the control plane, and the
    directory, as ``resolve`` and ``load``) and their shards."""

    control: AsyncEngine
    load_tenant: Callable[[UUID], Awaitable[TenantContext | None]]
    router: ShardRouter
    on_stale: OnStale


async def _tenant_ids(control: AsyncEngine, tenant: str | None) -> list[UUID]:
    """The tenant named by id or slug (LookupError when none), or every placed tenant
    whose data is kept."""
    stmt = select(Tenant.id).join(DirectoryEntry, DirectoryEntry.tenant_id == Tenant.id)
    if tenant is None:
        stmt = stmt.where(Tenant.status.in_(("active", "suspended")))
    else:
        try:
            by_id: UUID | None = UUID(tenant)
        except ValueError:
            by_id = None
        named = Tenant.slug == tenant
        stmt = stmt.where(or_(Tenant.id == by_id, named) if by_id else named)
    async with control.connect() as conn:
        found = [row[0] for row in await conn.execute(stmt.order_by(Tenant.id))]
    if tenant is not None and not found:
        raise LookupError(f"no tenant {tenant!r} placed on a shard")
    return found


async def rebuild_tenant(platform: Platform, tenant: TenantContext) -> dict[str, int]:
    """Every entry of the tenant from its records, in one transaction (searches see the
    old entries until it commits); entries written per kind."""
    async with platform.router.transaction(
        tenant, write=True, on_stale=platform.on_stale
    ) as session:
        await session.execute(REBUILD_STATEMENT_TIMEOUT)
        return await SearchIndex(session, tenant.tenant_id).rebuild()


async def rebuild(platform: Platform, tenant: str | None = None) -> dict[str, Any]:
    """``meridian search rebuild``: one tenant (id or slug) or every one."""
    done: list[dict[str, Any]] = []
    for tenant_id in await _tenant_ids(platform.control, tenant):
        # Uncached: an operator's command acts on the directory as it is now.
        ctx = await platform.load_tenant(tenant_id)
        if ctx is None or ctx.status is TenantStatus.DELETED:
            if tenant is not None:
                raise LookupError(f"tenant {tenant!r} is not placed on a shard or is deleted")
            continue
        entries = await rebuild_tenant(platform, ctx)
        done.append({"tenant": str(tenant_id), "slug": ctx.slug, "entries": entries})
    total = sum(sum(d["entries"].values()) for d in done)
    return {"tenants": len(done), "entries": total, "done": done}
