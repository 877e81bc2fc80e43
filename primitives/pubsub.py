"""A Redis pub/sub subscription to one channel that reconnects by itself.

redis-py's asyncio PubSub does not reconnect, and what is published while a subscriber
is away is lost. So the listener starts over on any failure (with a growing, jittered
pause, so that instances do not reconnect in lockstep) and calls ``on_subscribed``
after every (re)subscription, before ``subscribed`` is set: its users clear the local
state the missed messages would have invalidated. ``on_unsubscribed`` hears that a
confirmed subscription was lost (its users stop trusting local state for long). A
subscription counts once the server has confirmed it (redis-py's ``subscribe`` only
sends the command): from then on nothing published is missed, so what the hook cleared
cannot be refilled from before it. When the channel is quiet the listener pings, and a
server that does not answer within ``reply_timeout`` (a hung process, a dead peer
behind a silent socket) is left for a new connection within seconds rather than at the
next message.

Works with a standalone ``Redis`` and with ``RedisCluster`` clients.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

RedisClient = Redis | RedisCluster

log = logging.getLogger("meridian.pubsub")


class PubSubListener:
    """Hands every message of ``channel`` to ``on_message(data)``; ``start()`` once,
    ``close()`` at shutdown. ``subscribed`` is set while the subscription is live."""

    def __init__(
        self,
        redis: RedisClient,
        channel: str,
        on_message: Callable[[bytes | str], None],
        *,
        on_subscribed: Callable[[], None] | None = None,
        on_unsubscribed: Callable[[], None] | None = None,
        name: str = "pub/sub listener",
        min_backoff: float = 0.1,
        max_backoff: float = 2.0,
        idle_ping: float = 1.0,
        reply_timeout: float = 2.0,
        logger: logging.Logger = log,
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._on_unsubscribed = on_unsubscribed
        self._name = name
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._idle_ping = idle_ping
        self._reply_timeout = reply_timeout
        self._log = logger
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    @property
    def channel(self) -> str:
        return self._channel

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"{self._name} ({self._channel})"
            )

    async def close(self) -> None:
        """Stop listening and close the subscription's connection."""
        task, self._task = self._task, None
        while task is not None and not task.done():
            task.cancel()
            # wait(), not await: the task's CancelledError is expected, this caller's
            # own cancellation must still propagate. Cancelled again if it is not done
            # within a second: a cancellation that lands as a library call completes
            # can be lost inside it, and shutdown must never hang on that.
            await asyncio.wait((task,), timeout=1.0)
        self.subscribed.clear()

    async def _run(self) -> None:
        backoff = self._min_backoff
        while True:
            pubsub: PubSub | None = None
            try:
                if isinstance(self._redis, RedisCluster):
                    # Cluster pub/sub needs the slot map before it can pick a node.
                    await self._redis.initialize()
                pubsub = self._redis.pubsub()
                await self._subscribe(pubsub)
                if self._on_subscribed is not None:
                    # If it fails, local state may be stale: not subscribed, try again.
                    self._on_subscribed()
                self.subscribed.set()
                backoff = self._min_backoff
                await self._listen(pubsub)
            except Exception as exc:  # any failure: start over with a fresh connection
                self._log.warning("%s: no subscription, retrying: %r", self._name, exc)
            finally:
                if self.subscribed.is_set():
                    self.subscribed.clear()
                    self._lost()
                if pubsub is not None:
                    try:
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
                    except Exception as exc:  # the connection is being dropped anyway
                        self._log.debug("%s: closing the old subscription: %r", self._name, exc)
            await asyncio.sleep(backoff * (0.5 + 0.5 * random.random()))  # noqa: S311 - spreading, not secrecy
            backoff = min(backoff * 2, self._max_backoff)

    def _lost(self) -> None:
        if self._on_unsubscribed is None:
            return
        try:
            self._on_unsubscribed()
        except Exception:  # the listener must go on reconnecting whatever the hook does
            self._log.exception("%s: on_unsubscribed failed", self._name)

    async def _subscribe(self, pubsub: PubSub) -> None:
        # Connecting included: a hung server accepts the connection (its kernel does)
        # and then answers nothing, not even the client's handshake.
        async with asyncio.timeout(self._reply_timeout):
            await pubsub.subscribe(self._channel)
            while True:
                message = await pubsub.get_message(timeout=self._reply_timeout)
                if message is not None and message.get("type") == "subscribe":
                    return

    async def _listen(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()  # anything from the server: a message or a pong
        while True:
            message = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=self._idle_ping
            )
            now = loop.time()
            if message is None:
                if now - heard > self._idle_ping + self._reply_timeout:
                    raise ConnectionError("no answer to pings")
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow
                # a cancellation that arrives as the ping completes, and the listener
                # would then outlive close().
                async with asyncio.timeout(self._reply_timeout):
                    await pubsub.ping()
                continue
            heard = now
            if message.get("type") != "message":  # the pings' pongs
                continue
            try:
                self._on_message(message["data"])
            except Exception:
                # One message its handler cannot take must not cost the subscription
                # (a reconnect would also make every user drop its local state).
                self._log.exception("%s: handler failed on a message", self._name)
