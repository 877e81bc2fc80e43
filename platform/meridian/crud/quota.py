"""The quotas on what a tenant keeps: records per object and bytes of stored files.

Records per object are checked where every record is created
(``TenantRepository.insert``): a new account, contact, lead, opportunity or case beyond
the tenant's ``records_per_object`` is refused with 409 ``quota-exceeded`` naming it.
Stored bytes are the tenant's files (imports, exports, error reports: the
``data_file`` table, as stored), checked by the transfers before a file is written.

Counting a tenant's rows on every insert would cost a scan of its index per record, so
the count is kept in process, per tenant and object, for a minute: far from the limit
an insert costs a look-up; within a tenth of it (or once the count is a minute old) the
rows are counted in the insert's own transaction. So the quota is exact but for inserts
that race each other at the very limit (each sees the other's row only once committed).

``TenantAccess.write`` puts the tenant's limit into the session (``LIMIT``); sessions
without it (the platform's own jobs, tests of the kit) are not limited.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from meridian.crud.compiled import fetchrow
from meridian.errors import QuotaExceeded
from primitives.localcache import LocalCache
from tenancy.planes import ShardBase

LIMIT = "meridian.records_per_object"
# Counts kept per (tenant, object): refreshed from the database at least this often.
_FRESH = 60.0
_COUNTS: LocalCache[list[int]] = LocalCache(100_000, ttl=_FRESH)


async def admit_record(session: AsyncSession, tenant_id: UUID, name: str) -> None:
    """Count one more record of the tenant in the table ``name``, or refuse it (409)."""
    limit: int | None = session.info.get(LIMIT)
    if limit is None:
        return
    key = (tenant_id, name)
    known = _COUNTS.get(key)
    if known is not None and known[0] + 1 < limit - limit // 10:
        known[0] += 1
        return
    count = int(await session.scalar(_counted(name, tenant_id)) or 0)
    if count >= limit:
        _COUNTS.set(key, [count])
        raise QuotaExceeded(
            f"The tenant has {count} {name} records, its plan's limit "
            f"(records_per_object: {limit}); delete some, or ask for a larger plan.",
            quota=f"records_per_object.{name}",
            limit=limit,
            used=count,
        )
    _COUNTS.set(key, [count + 1])


def _counted(name: str, tenant_id: UUID) -> Select[int]:
    table = ShardBase.metadata.tables[name]
    return select(func.count()).select_from(table).where(table.c.tenant_id == tenant_id)


def counted_kinds() -> list[str]:
    """The objects whose records the quota counts: the tables with custom fields (the
    CRM's own objects), as ``TenantRepository.insert`` counts them."""
    return sorted(t.name for t in ShardBase.metadata.tables.values() if "custom" in t.c)


async def records(conn: asyncpg.Connection, tenant_id: UUID) -> dict[str, int]:
    """The tenant's records per counted object (one index scan each)."""
    out: dict[str, int] = {}
    for kind in counted_kinds():
        found = await fetchrow(conn, _counted(kind, tenant_id))
        out[kind] = int(found[0]) if found is not None else 0
    return out


async def stored_bytes(conn: asyncpg.Connection, tenant_id: UUID) -> int:
    """Bytes the tenant's files take on the shard (sealed and compressed, as stored)."""
    files = ShardBase.metadata.tables["data_file"]
    stmt = select(func.coalesce(func.sum(files.c.stored_bytes), 0)).where(
        files.c.tenant_id == tenant_id
    )
    found = await fetchrow(conn, stmt)
    return int(found[0]) if found is not None else 0
