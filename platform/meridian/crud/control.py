"""The control-plane flows: the one place a control-plane transaction is opened for a
request or an operation (services take the connection, routers open none).

``read`` runs work on one connection (its implicit transaction is rolled back),
``transact`` commits the work before it returns, and ``change_policy`` is ``transact``
for a change of a tenant's access rules: under the tenant's policy lock, announced to
this process and the others once committed. Tenant-shard work has its twins in
``meridian.crud.endpoints``: ``writing`` for writes, ``by_id`` and ``read`` for reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from authz import store
from meridian.deps import TenantAccess

T = TypeVar("T")


async def read(control: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """``work`` (reads) on one control-plane connection."""
    async with control.connect() as conn:
        return await work(conn)


async def transact(control: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """``work`` in one control-plane transaction, committed before this returns (an
    exception rolls it back)."""
    async with control.begin() as conn:
        return await work(conn)


async def change_policy(
    access: TenantAccess, work: Callable[[AsyncConnection, int], Awaitable[T]]
) -> T:
    """``work(conn, version)`` in one control-plane transaction that first locks the
    tenant's policy (``version`` is the version under the lock, for If-Match); when
    ``work`` bumped the version, the change is applied here and announced to the other
    instances after the commit."""
    tenant_id = access.tenant.tenant_id

    async def locked(conn: AsyncConnection) -> tuple[T, int, int]:
        version = await store.lock_policy(conn, tenant_id)
        result = await work(conn, version)
        return result, version, await store.read_version(conn, tenant_id)

    result, before, after = await transact(access.runtime.control, locked)
    if after != before:
        await access.runtime.announce_policy(tenant_id, after)
    return result
