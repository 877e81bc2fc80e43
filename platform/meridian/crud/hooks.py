"""What other domains do when the kit writes a record, without the kit knowing them.

A domain that keeps rows about records of other kinds registers an ``on_write``
callback at import: sharing forgets a deleted record's shares; leads score a lead again
when an activity is logged on it; search keeps its index of records. ``TenantRepository``
runs every callback right after each insert, update (one that changed something) and
delete, inside the same transaction: both commit or neither, and a callback that raises
refuses the write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from tenancy.context import TenantContext

Action = Literal["created", "updated", "deleted"]


@dataclass(frozen=True, slots=True)
class Written:
    """One write: the record's kind (its table), what happened, the row as it is now
    (as it was, for a deletion), and for an update the changed fields ({"old", "new"})."""

    kind: str
    action: Action
    row: Mapping[str, Any]
    changes: Mapping[str, Any] | None = None

    @property
    def record_id(self) -> UUID:
        record_id: UUID = self.row["id"]
        return record_id


OnWrite = Callable[[AsyncSession, TenantContext, Written], Awaitable[None]]

# By name, so registering again (a module imported twice) replaces instead of adding;
# callbacks run in the order they were first registered.
_ON_WRITE: dict[str, OnWrite] = {}


def on_write(name: str, callback: OnWrite) -> None:
    """Run ``callback`` in the transaction of every record write the kit makes."""
    _ON_WRITE[name] = callback


def names() -> tuple[str, ...]:
    """The registered callbacks, in the order they run."""
    return tuple(_ON_WRITE)


async def record_written(session: AsyncSession, tenant: TenantContext, written: Written) -> None:
    """Called by the kit right after a record's row is written, in the same transaction."""
    for callback in tuple(_ON_WRITE.values()):
        await callback(session, tenant, written)
