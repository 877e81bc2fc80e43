"""Transfer storage: files and their chunks, export and import jobs, the recovery
worklist, and the one lookup an import makes on the records it writes (a match by a
sealed field's blind index).

Every statement names ``tenant_id``. The job tables are not record tables (no owner, no
custom fields, no events of their own kind per change), so this is a module of small
functions rather than a ``TenantRepository``; the events a job's life makes are queued
with ``outbox.record`` by the service, in the transaction of the change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from sqlalchemy import ColumnElement, Select, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from meridian.crud.compiled import fetch, fetchrow
from meridian.crud.pagination import Cursor, Sort, after, order_by
from meridian.crud.repository import TenantRepository
from meridian.transfers.files import Chunk
from meridian.transfers.models import (
    DataExport,
    DataFile,
    DataFileChunk,
    DataImport,
    TransferUnfinished,
)

Job = type[DataExport] | type[DataImport]
Row = dict[str, Any]
# The recovery job's read across the shard's tenants (ids only; the policy lets it).
SWEEP = "SET LOCAL app.transfer_sweep = 'on'"
UNFINISHED = (
    "SELECT tenant_id, id, kind FROM transfer_unfinished "
    "WHERE heartbeat_at < now() - make_interval(secs => $1) ORDER BY heartbeat_at LIMIT $2"
)


# -- files -------------------------------------------------------------------------------
async def insert_file(
    session: AsyncSession,
    tenant_id: UUID,
    file_id: UUID,
    *,
    purpose: str,
    media_type: str,
    key_version: int,
    expires_at: datetime,
) -> None:
    await session.execute(
        insert(DataFile).values(
            tenant_id=tenant_id,
            id=file_id,
            purpose=purpose,
            media_type=media_type,
            key_version=key_version,
            expires_at=expires_at,
        )
    )


async def insert_chunks(
    session: AsyncSession, tenant_id: UUID, file_id: UUID, chunks: Sequence[Chunk]
) -> None:
    """The chunks, and the file's counters: what it holds so far."""
    if not chunks:
        return
    await session.execute(
        insert(DataFileChunk),
        [
            {
                "tenant_id": tenant_id,
                "file_id": file_id,
                "seq": c.seq,
                "raw_offset": c.raw_offset,
                "raw_size": c.raw_size,
                "data": c.data,
            }
            for c in chunks
        ],
    )
    f = DataFile
    await session.execute(
        update(f)
        .where(f.tenant_id == tenant_id, f.id == file_id)
        .values(
            chunks=chunks[-1].seq + 1,
            raw_bytes=chunks[-1].raw_offset + chunks[-1].raw_size,
            stored_bytes=f.stored_bytes + sum(len(c.data) for c in chunks),
        )
    )


async def complete_file(
    session: AsyncSession, tenant_id: UUID, file_id: UUID, expires_at: datetime
) -> None:
    f = DataFile
    await session.execute(
        update(f)
        .where(f.tenant_id == tenant_id, f.id == file_id)
        .values(complete=True, expires_at=expires_at)
    )


async def delete_file(session: AsyncSession, tenant_id: UUID, file_id: UUID) -> None:
    """The file and (by its foreign key) its chunks."""
    f = DataFile
    await session.execute(delete(f).where(f.tenant_id == tenant_id, f.id == file_id))


_FILE_COLUMNS = (
    DataFile.id,
    DataFile.purpose,
    DataFile.media_type,
    DataFile.key_version,
    DataFile.chunks,
    DataFile.raw_bytes,
    DataFile.stored_bytes,
    DataFile.complete,
    DataFile.created_at,
    DataFile.expires_at,
)


async def read_file(conn: asyncpg.Connection, tenant_id: UUID, file_id: UUID) -> Row | None:
    f = DataFile
    found = await fetchrow(
        conn, select(*_FILE_COLUMNS).where(f.tenant_id == tenant_id, f.id == file_id)
    )
    return dict(found) if found is not None else None


async def read_file_in(session: AsyncSession, tenant_id: UUID, file_id: UUID) -> Row:
    """The file's row in a write transaction (a report a resumed run goes on writing)."""
    f = DataFile
    stmt = select(*_FILE_COLUMNS).where(f.tenant_id == tenant_id, f.id == file_id)
    return dict((await session.execute(stmt)).mappings().one())


async def read_chunk(
    conn: asyncpg.Connection, tenant_id: UUID, file_id: UUID, seq: int
) -> tuple[int, bytes] | None:
    c = DataFileChunk
    found = await fetchrow(
        conn,
        select(c.raw_offset, c.data).where(
            c.tenant_id == tenant_id, c.file_id == file_id, c.seq == seq
        ),
    )
    return (int(found[0]), bytes(found[1])) if found is not None else None


async def chunk_at(conn: asyncpg.Connection, tenant_id: UUID, file_id: UUID, offset: int) -> int:
    """The chunk that holds byte ``offset`` of the file (the first one: 0)."""
    c = DataFileChunk
    found = await fetchrow(
        conn,
        select(c.seq)
        .where(c.tenant_id == tenant_id, c.file_id == file_id, c.raw_offset <= offset)
        .order_by(c.seq.desc())
        .limit(1),
    )
    return int(found[0]) if found is not None else 0


# -- jobs --------------------------------------------------------------------------------
async def insert_job(session: AsyncSession, model: Job, values: Mapping[str, Any]) -> Row:
    stmt = insert(model).values(**values).returning(*model.__table__.columns)
    return dict((await session.execute(stmt)).mappings().one())


def _job(model: Job, tenant_id: UUID, job_id: UUID) -> Select[Any]:
    return select(*model.__table__.columns).where(model.tenant_id == tenant_id, model.id == job_id)


async def read_job(
    conn: asyncpg.Connection, model: Job, tenant_id: UUID, job_id: UUID
) -> Row | None:
    found = await fetchrow(conn, _job(model, tenant_id, job_id))
    return _decoded(model, found) if found is not None else None


async def lock_job(session: AsyncSession, model: Job, tenant_id: UUID, job_id: UUID) -> Row | None:
    """The job, locked until commit: one writer of its progress at a time."""
    stmt = _job(model, tenant_id, job_id).with_for_update()
    found = (await session.execute(stmt)).mappings().one_or_none()
    return dict(found) if found is not None else None


async def update_job(
    session: AsyncSession, model: Job, tenant_id: UUID, job_id: UUID, **values: Any
) -> Row:
    stmt = (
        update(model)
        .where(model.tenant_id == tenant_id, model.id == job_id)
        .values(**values, updated_at=func.now())
        .returning(*model.__table__.columns)
    )
    return dict((await session.execute(stmt)).mappings().one())


async def list_jobs(
    conn: asyncpg.Connection,
    model: Job,
    tenant_id: UUID,
    *,
    where: Sequence[ColumnElement[bool]],
    sort: Sort,
    limit: int,
    cursor: Cursor | None,
) -> list[Row]:
    """Up to ``limit + 1`` jobs (the extra one says a next page exists), newest first."""
    stmt = select(*model.__table__.columns).where(model.tenant_id == tenant_id, *where)
    if cursor is not None:
        stmt = stmt.where(after(sort, model.id, cursor))
    stmt = stmt.order_by(*order_by(sort, model.id)).limit(limit + 1)
    return [_decoded(model, r) for r in await fetch(conn, stmt)]


def _decoded(model: Job, record: Mapping[str, Any]) -> Row:
    """A row of the raw read path as the ORM's: it has no JSON codec (JSONB is text)."""
    row = dict(record)
    for column in model.__table__.columns:
        value = row.get(column.key)
        if isinstance(value, str) and isinstance(column.type, JSONB):
            row[column.key] = orjson.loads(value)
    return row


# -- the recovery worklist ----------------------------------------------------------------
async def mark_unfinished(session: AsyncSession, tenant_id: UUID, job_id: UUID, kind: str) -> None:
    stmt = pg_insert(TransferUnfinished).values(tenant_id=tenant_id, id=job_id, kind=kind)
    await session.execute(stmt.on_conflict_do_nothing())


async def heartbeat(session: AsyncSession, tenant_id: UUID, job_id: UUID) -> None:
    u = TransferUnfinished
    await session.execute(
        update(u).where(u.tenant_id == tenant_id, u.id == job_id).values(heartbeat_at=func.now())
    )


async def finished(session: AsyncSession, tenant_id: UUID, job_id: UUID) -> None:
    u = TransferUnfinished
    await session.execute(delete(u).where(u.tenant_id == tenant_id, u.id == job_id))


async def unfinished_on(
    pool: asyncpg.Pool, *, older_than: float, limit: int
) -> list[tuple[UUID, UUID, str]]:
    """(tenant, job, kind) of this shard's jobs not at an end whose worker has not
    reported for ``older_than`` seconds (or that never started)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(SWEEP)
        rows = await conn.fetch(UNFINISHED, older_than, limit)
    return [(r["tenant_id"], r["id"], r["kind"]) for r in rows]


# -- matching the records an import writes ------------------------------------------------
async def match_by_index(
    session: AsyncSession,
    repository: type[TenantRepository[Any]],
    tenant_id: UUID,
    criterion: ColumnElement[bool],
) -> UUID | None:
    """The oldest of the tenant's records of ``repository``'s kind that ``criterion``
    (a blind-index match, ``encryption.service.blind_filter``) finds, whoever's record
    scope it is in."""
    stmt = (
        select(repository.attr("id"))
        .where(repository.attr("tenant_id") == tenant_id, criterion)
        .order_by(repository.attr("created_at"), repository.attr("id"))
        .limit(1)
    )
    found: UUID | None = await session.scalar(stmt)
    return found
