"""What other domains do when the kit creates or deletes a record, without the kit
knowing them.

A domain that keeps rows about records of other kinds (sharing: a record's shares)
registers an ``on_delete`` callback at import. ``endpoints.remove`` runs every callback
inside the transaction of the DELETE, after the row is gone: both commit or neither.
A domain whose rows depend on records of another kind (leads: a lead's score counts its
activities) registers an ``on_create`` callback, which ``TenantRepository.insert`` runs
in the transaction of the INSERT, with the new row.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from tenancy.context import TenantContext

# (session of the write, tenant, the record's kind (its table), the record's id)
OnDelete = Callable[[AsyncSession, TenantContext, str, UUID], Awaitable[None]]

# (session of the write, tenant, the record's kind (its table), the row as inserted)
OnCreate = Callable[[AsyncSession, TenantContext, str, Mapping[str, Any]], Awaitable[None]]

# By name, so registering again (a module imported twice) replaces instead of adding;
# callbacks run in the order they were first registered.
_ON_DELETE: dict[str, OnDelete] = {}
_ON_CREATE: dict[str, tuple[str, OnCreate]] = {}


def on_delete(name: str, callback: OnDelete) -> None:
    """Run ``callback`` in the transaction of every record deletion the kit makes."""
    _ON_DELETE[name] = callback


def on_delete_names() -> tuple[str, ...]:
    """The registered callbacks, in the order they run."""
    return tuple(_ON_DELETE)


async def record_deleted(
    session: AsyncSession, tenant: TenantContext, kind: str, record_id: UUID
) -> None:
    """Called by the kit right after a record's row is deleted, in the same transaction."""
    for callback in tuple(_ON_DELETE.values()):
        await callback(session, tenant, kind, record_id)


def on_create(name: str, kind: str, callback: OnCreate) -> None:
    """Run ``callback`` in the transaction of every creation of a ``kind`` record."""
    _ON_CREATE[name] = (kind, callback)


async def record_created(
    session: AsyncSession, tenant: TenantContext, kind: str, row: Mapping[str, Any]
) -> None:
    """Called by the kit right after a record's row is inserted, in the same transaction."""
    for wanted, callback in tuple(_ON_CREATE.values()):
        if wanted == kind:
            await callback(session, tenant, kind, row)
