"""The read flow of every request: routers and services open no read transaction.

A record by id goes through ``by_id``, which picks how it is read (``by_id_strategy``:
the shard's strategy, ``ShardRouter.read_strategy``, when the read is one row nobody's
scope hides); every other read (lists, timelines, a record with its parts) runs its
repository's work in ``read``, one read-only transaction inside the tenant on a raw
asyncpg connection. Writes have their twin in ``meridian.crud.endpoints.writing``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

import asyncpg

from meridian.crud.repository import Row, TenantRepository
from meridian.deps import TenantAccess, record_viewer
from sharding.engine import ReadStrategy

T = TypeVar("T")


def by_id_strategy(
    access: TenantAccess, repo: type[TenantRepository[Any]], viewer: UUID | None
) -> ReadStrategy:
    """How a by-id read of ``repo`` for ``viewer`` runs: in one statement where the
    tenant's shard reads that way and the read is the row alone (no record scope, no
    parts such as a pipeline's stages); otherwise in a read transaction."""
    if not repo.one_statement_reads or repo.is_scoped_for(viewer):
        return ReadStrategy.TRANSACTION
    return access.runtime.router.read_strategy(access.tenant.shard_id)


async def by_id(
    access: TenantAccess, repo: type[TenantRepository[Any]], record_id: UUID
) -> Row | None:
    """The record if it exists in the tenant and the caller's record scope holds it."""
    viewer = record_viewer(access)
    runtime = access.runtime
    tenant_id = access.tenant.tenant_id
    # One statement: one round trip (ShardRouter.read_one), its SQL compiled once per class.
    found = await runtime.router.read_row(
        access.tenant,
        repo.by_id_sql,
        (record_id,),
        lambda conn: repo.fetch_visible(conn, tenant_id, record_id, viewer),
        strategy=by_id_strategy(access, repo, viewer),
        on_stale=runtime.refresh_tenant,
    )
    return dict(found) if found is not None else None


async def read(access: TenantAccess, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """``work`` (a repository's reads) in one read-only transaction inside the tenant,
    so what it reads is one consistent snapshot; retried once on a fresh directory
    entry when the shard says the tenant has moved."""
    runtime = access.runtime
    async with runtime.router.reader(access.tenant, on_stale=runtime.refresh_tenant) as conn:
        return await work(conn)
