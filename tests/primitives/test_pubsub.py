"""The pub/sub listener against real Redis: a standalone server, a throwaway one that is
killed, frozen and brought back, and a 3-master Redis Cluster."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from primitives.pubsub import PubSubListener, RedisClient
from tests.fixtures.redis_servers import RedisClusterServers, RedisServer
from tests.fixtures.waiting import eventually

# Quick retries and pings, so that a test reconnects in well under a second; how long
# anything takes is never asserted (see tests/fixtures/waiting.py).
FAST = {"min_backoff": 0.05, "max_backoff": 0.2, "idle_ping": 0.2, "reply_timeout": 1.0}


class Recorder:
    """The listener's user: what it received, and how often it had to start afresh."""

    def __init__(self) -> None:
        self.received: list[bytes | str] = []
        self.resubscribed = 0

    def on_message(self, data: bytes | str) -> None:
        if data == b"poison":
            raise ValueError("a message this handler cannot take")
        self.received.append(data)

    def on_subscribed(self) -> None:
        self.resubscribed += 1


def channel_name() -> str:
    # Pub/sub is server-wide (whatever the database): other runs may share this Redis.
    return f"test:primitives:{uuid.uuid4().hex}"


@pytest.fixture
async def listen() -> AsyncIterator[Callable[..., tuple[PubSubListener, Recorder]]]:
    made: list[PubSubListener] = []

    def factory(redis: RedisClient, channel: str, **kw: float) -> tuple[PubSubListener, Recorder]:
        recorder = Recorder()
        listener = PubSubListener(
            redis,
            channel,
            recorder.on_message,
            on_subscribed=recorder.on_subscribed,
            **{**FAST, **kw},  # type: ignore[arg-type]
        )
        listener.start()
        made.append(listener)
        return listener, recorder

    yield factory
    for listener in made:
        await listener.close()


async def received(recorder: Recorder, *expected: bytes) -> None:
    await eventually(lambda: len(recorder.received) >= len(expected), what="the messages")
    assert recorder.received == list(expected)


async def test_messages_arrive_and_close_lets_go(
    redis_url: str, listen: Callable[..., tuple[PubSubListener, Recorder]]
) -> None:
    client = Redis.from_url(redis_url)
    channel = channel_name()
    try:
        listener, recorder = listen(client, channel)
        await eventually(listener.subscribed.is_set, what="the subscription")
        assert recorder.resubscribed == 1
        for data in (b"one", b"poison", b"two"):
            await client.publish(channel, data)
        # The message its handler failed on is skipped; the subscription carries on.
        await received(recorder, b"one", b"two")
        assert recorder.resubscribed == 1
        assert await client.pubsub_numsub(channel) == [(channel.encode(), 1)]
        await listener.close()
        assert not listener.subscribed.is_set()
        assert await client.pubsub_numsub(channel) == [(channel.encode(), 0)]
        await listener.close()  # closing twice is harmless
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_reconnects_after_redis_restarts(
    tmp_path: Path, listen: Callable[..., tuple[PubSubListener, Recorder]]
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=5)
    channel = channel_name()
    try:
        listener, recorder = listen(client, channel)
        await eventually(listener.subscribed.is_set, what="the subscription")
        await client.publish(channel, b"before")
        await received(recorder, b"before")

        server.stop()
        await eventually(lambda: not listener.subscribed.is_set(), what="noticing the loss")
        server.start()  # same port, empty
        await eventually(listener.subscribed.is_set, what="subscribing again")
        # The hook ran again: its user clears what the lost messages would have changed.
        assert recorder.resubscribed == 2
        # A client of its own: the pooled connections of `client` died with the server.
        async with Redis.from_url(server.url) as publisher:
            await publisher.publish(channel, b"after")
        await received(recorder, b"before", b"after")
    finally:
        server.stop()
        await client.aclose()


@pytest.mark.slow
async def test_a_hung_server_is_left_then_rejoined(
    tmp_path: Path,
    listen: Callable[..., tuple[PubSubListener, Recorder]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A frozen process keeps its socket open (its kernel still accepts connections)
    but answers nothing: only the unanswered pings and subscriptions give it away."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    assert server.process is not None
    client = Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=5)
    channel = channel_name()
    caplog.set_level(logging.WARNING, logger="meridian.pubsub")
    try:
        listener, recorder = listen(client, channel, reply_timeout=0.5)
        await eventually(listener.subscribed.is_set, what="the subscription")

        server.process.send_signal(signal.SIGSTOP)
        await eventually(lambda: not listener.subscribed.is_set(), what="noticing the silence")

        def retries() -> int:
            return sum("no subscription" in r.getMessage() for r in caplog.records)

        # Attempts to subscribe again go unconfirmed: never taken for a subscription.
        await eventually(lambda: retries() >= 3, what="several unanswered attempts")
        assert not listener.subscribed.is_set()
        assert recorder.resubscribed == 1

        server.process.send_signal(signal.SIGCONT)
        await eventually(listener.subscribed.is_set, what="subscribing again")
        assert recorder.resubscribed == 2
        await client.publish(channel, b"back")
        await received(recorder, b"back")
    finally:
        server.process.send_signal(signal.SIGCONT)
        server.stop()
        await client.aclose()


async def test_a_failing_hook_means_not_subscribed_yet(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    calls = 0

    def clear_local_state() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("could not clear")

    listener = PubSubListener(
        client,
        channel_name(),
        lambda _data: None,
        on_subscribed=clear_local_state,
        **FAST,  # type: ignore[arg-type]
    )
    listener.start()
    try:
        await eventually(listener.subscribed.is_set, what="the second attempt")
        assert calls == 2
    finally:
        await listener.close()
        await client.aclose()


async def test_close_while_redis_is_unreachable(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")  # never started: nothing listens there
    client = Redis.from_url(server.url, socket_connect_timeout=1)
    listener = PubSubListener(client, channel_name(), lambda _data: None, **FAST)  # type: ignore[arg-type]
    listener.start()
    try:
        await asyncio.sleep(0.3)  # a few failed attempts and pauses
        assert not listener.subscribed.is_set()
    finally:
        await asyncio.wait_for(listener.close(), 30)
        await client.aclose()


async def test_on_a_redis_cluster(
    redis_cluster: RedisClusterServers, listen: Callable[..., tuple[PubSubListener, Recorder]]
) -> None:
    host, port = redis_cluster.startup_nodes[0]
    client = RedisCluster(host=host, port=port)
    channel = channel_name()
    listener, recorder = listen(client, channel)
    try:
        await eventually(listener.subscribed.is_set, what="the subscription")
        assert recorder.resubscribed == 1
        await client.publish(channel, b"clustered")
        await received(recorder, b"clustered")
    finally:
        # The listener first: running, it would initialize the closed client again
        # (and leave it to be reported unclosed when collected).
        await listener.close()
        await client.aclose()
