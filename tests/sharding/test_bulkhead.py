"""Bulkheads: a tenant holds at most its limit of a shard's transactions at once; its
excess waits its turn (first come, first served) or is refused after the wait, other
tenants never wait behind it, a request never waits on itself, and nothing leaks when
a waiter is cancelled. Through the API: 503 tenant-busy with Retry-After for the
flooding tenant, its neighbour on the same shard served."""

from __future__ import annotations

import asyncio
import contextvars
import uuid

import httpx
import pytest

from meridian.settings import Settings
from sharding.bulkhead import TenantBulkhead
from sharding.errors import TenantBusyError
from tests.fixtures.api import Tenant, instance, onboard
from tests.fixtures.problems import assert_problem


async def _holding(bulkhead: TenantBulkhead, tenant: uuid.UUID, release: asyncio.Event) -> None:
    async with bulkhead.hold(tenant):
        await release.wait()


async def test_excess_waits_in_order_then_is_refused() -> None:
    bulkhead = TenantBulkhead(2, wait=0.2)
    tenant, other = uuid.uuid4(), uuid.uuid4()
    release = [asyncio.Event() for _ in range(2)]
    holders = [asyncio.create_task(_holding(bulkhead, tenant, r)) for r in release]
    await asyncio.sleep(0)
    assert bulkhead.held(tenant) == 2
    order: list[str] = []

    async def waiter(name: str) -> None:
        async with bulkhead.hold(tenant):
            order.append(name)

    first = asyncio.create_task(waiter("first"))
    await asyncio.sleep(0)
    second = asyncio.create_task(waiter("second"))
    await asyncio.sleep(0)
    # Another tenant is not behind them.
    async with bulkhead.hold(other):
        assert bulkhead.held(other) == 1
    release[0].set()
    await asyncio.gather(first, second)
    assert order == ["first", "second"]
    # Both slots held again, and nobody lets go in time: refused, nothing left held.
    release.append(asyncio.Event())
    holders.append(asyncio.create_task(_holding(bulkhead, tenant, release[2])))
    await asyncio.sleep(0)
    assert bulkhead.held(tenant) == 2
    with pytest.raises(TenantBusyError):
        async with bulkhead.hold(tenant):
            pass
    assert bulkhead.held(tenant) == 2
    for event in release:
        event.set()
    await asyncio.gather(*holders)
    assert bulkhead.held(tenant) == 0
    assert bulkhead.held(other) == 0


async def test_a_waiter_that_gives_up_as_its_slot_frees_leaks_nothing_and_breaks_nothing() -> None:
    """A waiter's timeout cancels it at once, but it runs its clean-up only later: a
    release in between passes it over (dropping it from the line) and may forget the
    tenant, whose next request makes a new entry. The late clean-up must neither fail
    nor drop that new entry (its release would then fail: a 500, not a 503)."""
    bulkhead = TenantBulkhead(1, wait=30.0)
    tenant = uuid.uuid4()
    first = bulkhead.hold(tenant)
    await first.__aenter__()
    # Another request (this task holds the slot: its own would pass through).
    late = asyncio.create_task(
        _holding(bulkhead, tenant, asyncio.Event()), context=contextvars.Context()
    )
    await asyncio.sleep(0)  # in line
    assert bulkhead.held(tenant) == 1
    late.cancel()  # as its timeout does: the waiter is cancelled now, cleaned up later
    await first.__aexit__(None, None, None)  # passes it over; the tenant is forgotten
    assert bulkhead.held(tenant) == 0
    newer = bulkhead.hold(tenant)
    await newer.__aenter__()  # a new entry, before the late clean-up runs
    (outcome,) = await asyncio.gather(late, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError), outcome
    assert bulkhead.held(tenant) == 1  # the newer request's slot, still counted
    await newer.__aexit__(None, None, None)
    assert bulkhead.held(tenant) == 0


async def test_a_request_never_waits_on_itself() -> None:
    bulkhead = TenantBulkhead(1, wait=0.1)
    tenant = uuid.uuid4()
    async with bulkhead.hold(tenant):
        # A transaction opened inside another of the same request (its task) passes.
        async with bulkhead.hold(tenant):
            assert bulkhead.held(tenant) == 1

        # So does a task it starts (it inherits the request's context).
        async def child() -> None:
            async with bulkhead.hold(tenant):
                pass

        await asyncio.create_task(child())
    assert bulkhead.held(tenant) == 0


async def test_a_cancelled_waiter_leaks_nothing() -> None:
    bulkhead = TenantBulkhead(1, wait=5.0)
    tenant = uuid.uuid4()
    release = asyncio.Event()
    holder = asyncio.create_task(_holding(bulkhead, tenant, release))
    await asyncio.sleep(0)

    async def waiter() -> None:
        async with bulkhead.hold(tenant):
            pass

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    await holder
    assert bulkhead.held(tenant) == 0
    async with bulkhead.hold(tenant):  # the slot is free again
        assert bulkhead.held(tenant) == 1


async def test_the_api_refuses_the_flooding_tenant_only(
    settings: Settings,
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tenant: Tenant,
) -> None:
    neighbour = await onboard(
        app_client, admin_headers, region="us", slug=f"nb-{uuid.uuid4().hex[:8]}"
    )
    assert neighbour.shard_id == tenant.shard_id
    own = settings.model_copy(update={"tenant_connections": 1, "tenant_connections_wait": 0.2})
    async with instance(own) as client:
        bulkhead = client.app.state.runtime.router.bulkhead  # type: ignore[attr-defined]
        release = asyncio.Event()
        # The tenant's one slot is taken (as by a long request of its own).
        holder = asyncio.create_task(_holding(bulkhead, uuid.UUID(tenant.id), release))
        await asyncio.sleep(0)
        try:
            for path in ("/v1/contacts", f"/v1/contacts/{uuid.uuid4()}"):
                busy = await client.get(path, headers=tenant.headers)
                assert_problem(busy, 503, "tenant-busy")
                assert busy.headers["retry-after"] == "1"
            write = await client.post("/v1/accounts", json={"name": "X"}, headers=tenant.headers)
            assert_problem(write, 503, "tenant-busy")
            served = await client.get("/v1/contacts", headers=neighbour.headers)
            assert served.status_code == 200
            registry = client.app.state.runtime.metrics.registry  # type: ignore[attr-defined]
            assert registry.get_sample_value("meridian_tenant_busy_total") == 3
        finally:
            release.set()
            await holder
        assert (await client.get("/v1/contacts", headers=tenant.headers)).status_code == 200
        listed = await client.get("/v1/accounts", headers=tenant.headers)
        assert listed.json()["data"] == []  # the refused write wrote nothing
