"""Bulkheads: a tenant holds at most ``limit`` of a shard's connections at once, in this
process, so one tenant's flood cannot take every connection of a shard its neighbours
need.

A request of a tenant at its limit waits up to ``wait`` seconds for one of the tenant's
own transactions to end (first come, first served), then gets ``TenantBusyError``,
which the API answers 503 with ``Retry-After``. Other tenants never wait behind it:
each tenant counts only its own transactions. The count is per instance and per
tenant (a tenant lives on one shard), so the bound on a shard is ``limit`` times the
instances serving the tenant.

Counts exist only while a tenant has a transaction open (a busy tenant's entry is
dropped when its last transaction ends), so memory follows the tenants active at once.
Single-threaded: everything runs on one event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from uuid import UUID

from sharding.errors import TenantBusyError

# The tenant whose slot the running task (and the tasks it starts) holds.
_HOLDING: ContextVar[UUID | None] = ContextVar("bulkhead_holding", default=None)


class _Slots:
    __slots__ = ("held", "waiters")

    def __init__(self) -> None:
        self.held = 0
        self.waiters: deque[asyncio.Future[None]] = deque()


class TenantBulkhead:
    def __init__(self, limit: int, *, wait: float) -> None:
        if limit < 1:
            raise ValueError("a tenant holds at least one connection")
        self.limit = limit
        self.wait = wait
        self._tenants: dict[UUID, _Slots] = {}

    def held(self, tenant_id: UUID) -> int:
        slots = self._tenants.get(tenant_id)
        return slots.held if slots is not None else 0

    @asynccontextmanager
    async def hold(self, tenant_id: UUID) -> AsyncIterator[None]:
        """One of the tenant's connection slots for the duration of the block. A request
        is one slot: a transaction it opens inside another (its task, or a task it
        started, already holds one) passes through, so it never waits on itself."""
        if _HOLDING.get() == tenant_id:
            yield
            return
        await self._acquire(tenant_id)
        token = _HOLDING.set(tenant_id)
        try:
            yield
        finally:
            _HOLDING.reset(token)
            self._release(tenant_id)

    async def _acquire(self, tenant_id: UUID) -> None:
        slots = self._tenants.get(tenant_id)
        if slots is None:
            slots = self._tenants[tenant_id] = _Slots()
        if slots.held < self.limit and not slots.waiters:
            slots.held += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slots.waiters.append(waiter)
        try:
            async with asyncio.timeout(self.wait):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Handed a slot just as it gave up: pass it on rather than leak it.
                self._release(tenant_id)
            else:
                waiter.cancel()
                # Cancelled by its timeout, it may have been passed over (and dropped
                # from the line) by a release that ran before this did.
                if waiter in slots.waiters:
                    slots.waiters.remove(waiter)
                self._forget_if_idle(tenant_id, slots)
            if isinstance(exc, TimeoutError):
                raise TenantBusyError(tenant_id, retry_after=1.0) from None
            raise
        # A slot handed over by _release: ``held`` already counts it.

    def _release(self, tenant_id: UUID) -> None:
        slots = self._tenants[tenant_id]
        while slots.waiters:
            waiter = slots.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to the first in line
                return
        slots.held -= 1
        self._forget_if_idle(tenant_id, slots)

    def _forget_if_idle(self, tenant_id: UUID, slots: _Slots) -> None:
        # This entry only: a waiter that gave up late may hold one already forgotten
        # and replaced by a newer request's.
        if slots.held == 0 and not slots.waiters and self._tenants.get(tenant_id) is slots:
            del self._tenants[tenant_id]
