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
from sqlalchemy import LargeBinary, Table, Text, Uuid, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, array
from sqlalchemy.ext.asyncio import AsyncSession

from meridian.crud.compiled import fetch
from tenancy.planes import ShardBase


def _table(name: str) -> Table:
    table = ShardBase.metadata.tables.get(name)
    if table is None:
        raise LookupError(f"no shard table {name!r} (are the app's models imported?)")
    return table


async def key_versions(
    conn: asyncpg.Connection,
    table: str,
    tenant_id: UUID,
    below: int,
    *,
    column: str = "enc_version",
) -> dict[int, int]:
    """Rows of the tenant per key version older than ``below`` (the version in
    ``column``: a sealed row's ``enc_version``, a custom value's ``key_version``)."""
    t = _table(table)
    version = t.c[column]
    stmt = (
        select(version, func.count())
        .where(t.c.tenant_id == tenant_id, version < below)
        .group_by(version)
        .order_by(version)
    )
    return {int(v): int(count) for v, count in await fetch(conn, stmt)}


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


# -- sensitive custom fields (crud.custom): sealed in custom_value and the record -----------
async def sealed_custom_batch(
    session: AsyncSession,
    tenant_id: UUID,
    *,
    version: int,
    after: UUID | None,
    limit: int,
) -> list[dict[str, Any]]:
    """The sealed custom values under key ``version`` of up to ``limit`` records after
    ``after`` (in record id order), each with its field's object, name, type and
    uniqueness. The records are locked first (FOR NO KEY UPDATE, as a write of their
    custom fields locks them, then their values: one order, no deadlock), then their
    values are read again under the lock (a write may have re-sealed them meanwhile)."""
    v, d = _table("custom_value"), _table("field_definition")
    ids = (
        select(v.c.record_id)
        .distinct()
        .where(v.c.tenant_id == tenant_id, v.c.key_version == version)
    )
    if after is not None:
        ids = ids.where(v.c.record_id > after)
    ids = ids.order_by(v.c.record_id).limit(limit)
    kinds = select(v.c.record_id, d.c.object).join(
        d, (d.c.tenant_id == v.c.tenant_id) & (d.c.id == v.c.field_id)
    )
    kinds = kinds.where(v.c.tenant_id == tenant_id, v.c.record_id.in_(ids.scalar_subquery()))
    by_kind: dict[str, set[UUID]] = {}
    for record_id, kind in (await session.execute(kinds.distinct())).all():
        by_kind.setdefault(kind, set()).add(record_id)
    for kind, record_ids in sorted(by_kind.items()):
        t = _table(kind)
        await session.execute(
            select(t.c.id)
            .where(t.c.tenant_id == tenant_id, t.c.id.in_(sorted(record_ids)))
            .order_by(t.c.id)
            .with_for_update(key_share=True)
        )
    locked = [r for ids_ in by_kind.values() for r in ids_]
    stmt = (
        select(
            v.c.record_id,
            v.c.field_id,
            v.c.sealed_value,
            d.c.object,
            d.c.name,
            d.c.type,
            d.c.is_unique,
        )
        .join(d, (d.c.tenant_id == v.c.tenant_id) & (d.c.id == v.c.field_id))
        .where(
            v.c.tenant_id == tenant_id,
            v.c.key_version == version,
            v.c.record_id.in_(locked),
        )
        .order_by(v.c.record_id, v.c.field_id)
        .with_for_update(of=v, key_share=True)
    )
    return [dict(row) for row in (await session.execute(stmt)).mappings()]


async def reseal_custom(
    session: AsyncSession, tenant_id: UUID, *, version: int, values: Sequence[Mapping[str, Any]]
) -> None:
    """Each of ``values`` (``record_id``, ``field_id``, ``object``, ``name``, ``sealed``
    (base64), ``bidx``, ``unique``) written back under key ``version``: in custom_value,
    and in its record's ``custom`` when the field is active there (an archived field's
    value is in custom_value only)."""
    v = _table("custom_value")
    await session.execute(
        update(v)
        .where(
            v.c.tenant_id == tenant_id,
            v.c.field_id == bindparam("f"),
            v.c.record_id == bindparam("r"),
        )
        .values(
            sealed_value=bindparam("s"),
            bidx=bindparam("b"),
            unique_value=bindparam("u"),
            key_version=version,
        ),
        [
            {
                "f": x["field_id"],
                "r": x["record_id"],
                "s": x["sealed"],
                "b": x["bidx"],
                "u": x["bidx"].hex() if x["unique"] else None,
            }
            for x in values
        ],
    )
    for kind in sorted({x["object"] for x in values}):
        t = _table(kind)
        # jsonb_set of a parameter cast to jsonb: immutable, as Citus wants what an
        # UPDATE computes from a column.
        await session.execute(
            update(t)
            .where(
                t.c.tenant_id == tenant_id,
                t.c.id == bindparam("r"),
                t.c.custom.has_key(bindparam("n", type_=Text())),
            )
            .values(
                custom=func.jsonb_set(
                    t.c.custom,
                    array([bindparam("n", type_=Text())]),
                    bindparam("j", type_=JSONB()),
                )
            ),
            [
                {"r": x["record_id"], "n": x["name"], "j": {"sealed": x["sealed"]}}
                for x in values
                if x["object"] == kind
            ],
        )
