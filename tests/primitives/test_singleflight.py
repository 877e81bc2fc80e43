"""Single-flight: one load per key, its outcome shared, cancellation confined to the
caller it belongs to, nothing left behind."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import pytest

from primitives.singleflight import SingleFlight

T = TypeVar("T")


@pytest.fixture(autouse=True)
async def no_loop_errors() -> AsyncIterator[None]:
    """Fails the test if the event loop had something to log, such as "Future
    exception was never retrieved" (reported when such a future is freed)."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        yield
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert seen == []


async def within(awaitable: Awaitable[T]) -> T:
    """A safety net against a hang (a broken flight may never wake anyone)."""
    return await asyncio.wait_for(awaitable, 30)


class Loader:
    """Counts its calls; each call waits until the test releases it."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, value: str) -> str:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        return value


async def settle() -> None:
    """Lets every ready task run up to its next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_callers_share_one_load() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    load = Loader()
    callers = [asyncio.create_task(flight.run("k", load, "v")) for _ in range(50)]
    await within(load.started.wait())
    assert "k" in flight
    assert "other" not in flight
    load.release.set()
    assert await within(asyncio.gather(*callers)) == ["v"] * 50
    assert load.calls == 1
    assert len(flight) == 0
    # Later calls load again: the flight shares a load in progress, it caches nothing.
    assert await flight.run("k", load, "w") == "w"
    assert load.calls == 2


async def test_keys_are_independent() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    a, b = Loader(), Loader()
    first = asyncio.create_task(flight.run("a", a, "A"))
    second = asyncio.create_task(flight.run("b", b, "B"))
    await a.started.wait()
    await b.started.wait()
    b.release.set()
    assert await second == "B"
    assert not first.done()
    a.release.set()
    assert await first == "A"


class Boom(Exception):
    pass


async def test_followers_get_the_leaders_exception() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        raise Boom("the database said no")

    callers = [asyncio.create_task(flight.run("k", failing)) for _ in range(10)]
    await started.wait()
    release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, Boom) for r in results)
    assert len(flight) == 0


async def test_a_failed_load_with_no_followers_leaves_nothing_unretrieved() -> None:
    flight: SingleFlight[str, str] = SingleFlight()

    async def failing() -> str:
        raise Boom("alone")

    with pytest.raises(Boom):
        await flight.run("k", failing)
    assert len(flight) == 0


async def test_a_cancelled_leader_hands_the_load_to_a_follower() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    load = Loader()
    leader = asyncio.create_task(flight.run("k", load, "v"))
    await within(load.started.wait())
    followers = [asyncio.create_task(flight.run("k", load, "v")) for _ in range(5)]
    await settle()
    load.started.clear()
    leader.cancel()  # e.g. the client of the first request went away
    await within(load.started.wait())  # one follower leads a new load
    assert load.calls == 2
    load.release.set()
    assert await within(asyncio.gather(*followers)) == ["v"] * 5
    assert leader.cancelled()
    assert len(flight) == 0


async def test_a_cancelled_follower_leaves_the_others_alone() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    load = Loader()
    leader = asyncio.create_task(flight.run("k", load, "v"))
    await within(load.started.wait())
    quitter = asyncio.create_task(flight.run("k", load, "v"))
    stayer = asyncio.create_task(flight.run("k", load, "v"))
    await settle()
    quitter.cancel()
    await settle()
    assert quitter.cancelled()
    assert not leader.done()
    load.release.set()
    assert await leader == "v"
    assert await stayer == "v"
    assert load.calls == 1
    assert len(flight) == 0
