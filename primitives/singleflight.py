"""One in-flight load per key in a process: the first caller (the leader) runs it, the
callers that arrive meanwhile (followers) await its result or its exception.

A burst of cold requests for one key costs one load, not one per request. A leader that
is cancelled (its request went away) fails nobody else: its followers wake and one of
them leads a new load. Nothing outlives the load: the key is released when it ends,
however it ends, and no future is left with an exception nobody retrieved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, ParamSpec, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
P = ParamSpec("P")


class SingleFlight(Generic[K, V]):
    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[K, asyncio.Future[V]] = {}

    def __contains__(self, key: object) -> bool:
        """Whether a load of ``key`` is in flight."""
        return key in self._calls

    def __len__(self) -> int:
        return len(self._calls)

    async def run(
        self, key: K, load: Callable[P, Awaitable[V]], /, *args: P.args, **kwargs: P.kwargs
    ) -> V:
        """``await load(*args, **kwargs)``, unless a load of ``key`` is already in
        flight: then its outcome, without a second load."""
        while (pending := self._calls.get(key)) is not None:
            # asyncio.wait, not a plain await: cancelling this follower must not cancel
            # the shared future under the leader and the other followers.
            await asyncio.wait((pending,))
            if not pending.cancelled():
                return pending.result()  # the leader's value, or its exception raised
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._calls[key] = future
        try:
            value = await load(*args, **kwargs)
        except asyncio.CancelledError:
            future.cancel()  # followers retry; the cancellation is this caller's alone
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: followers re-raise it, none may be waiting
            raise
        finally:
            del self._calls[key]
        future.set_result(value)
        return value
