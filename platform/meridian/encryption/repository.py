"""The SQL of re-encryption, for any table with sealed fields (``encryption.fields.
SENSITIVE``): which key versions a tenant's rows use, a batch of rows still sealed
under one version, and one UPDATE that writes a batch back under another.

The kit knows no domain, so a table is taken from the shard metadata by name (the
app's models are imported by then, as ``meridian.models`` imports them all), and the
statements are SQLAlchemy Core on it; every one names ``tenant_id``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import LargeBinary, Table, Uuid, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from meridian.crud.compiled import fetch
from tenancy.planes import ShardBase


def _table(name: str) -> Table:
    table = ShardBase.metadata.tables.get(name)
    if table is None:
        raise LookupError(f"no shard table {name!r} (are the app's models imported?)")
    return table


async def key_versions(
    conn: asyncpg.Connection, table: str, tenant_id: UUID, below: int
) -> dict[int, int]:
    """Rows of the tenant per key version older than ``below``."""
    t = _table(table)
    stmt = (
        select(t.c.enc_version, func.count())
        .where(t.c.tenant_id == tenant_id, t.c.enc_version < below)
        .group_by(t.c.enc_version)
        .order_by(t.c.enc_version)
    )
    return {int(version): int(count) for version, count in await fetch(conn, stmt)}


async def sealed_batch(
    session: AsyncSession,
    table: str,
    tenant_id: UUID,
    fields: Sequence[str],
    *,
    version: int,
    after: UUID | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Up to ``limit`` of the tenant's rows whose ``fields`` are sealed under key
    ``version``, after ``after`` in id order, with their ciphertexts, locked FOR NO KEY
    UPDATE until the transaction ends (a concurrent change of the row waits)."""
    t = _table(table)
    stmt = select(t.c.id, *(t.c[f"{f}_enc"] for f in fields)).where(
        t.c.tenant_id == tenant_id, t.c.enc_version == version
    )
    if after is not None:
        stmt = stmt.where(t.c.id > after)
    stmt = stmt.order_by(t.c.id).limit(limit).with_for_update(key_share=True)
    return [dict(row) for row in (await session.execute(stmt)).mappings()]


async def reseal(
    session: AsyncSession,
    table: str,
    tenant_id: UUID,
    *,
    version: int,
    ids: Sequence[UUID],
    columns: Mapping[str, Sequence[bytes | None]],
) -> None:
    """One UPDATE for the batch: each row of ``ids`` gets the values ``columns`` hold for
    it (per column, one value per id, in the same order) and key ``version``."""
    t = _table(table)
    # unnest() of equal-length arrays in one select list zips them into rows.
    batch = select(
        func.unnest(bindparam("ids", list(ids), type_=ARRAY(Uuid()))).label("id"),
        *(
            func.unnest(bindparam(name, list(values), type_=ARRAY(LargeBinary()))).label(name)
            for name, values in columns.items()
        ),
    ).subquery("batch")
    stmt = (
        update(t)
        .where(t.c.tenant_id == tenant_id, t.c.id == batch.c.id)
        .values({**{name: batch.c[name] for name in columns}, "enc_version": version})
    )
    await session.execute(stmt)
