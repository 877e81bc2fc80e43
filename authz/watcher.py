"""Policy-change announcements between API instances over Redis pub/sub.

The published Casbin watchers pin old casbin and redis versions and call back from
threads; this one is ~100 lines on ``redis.asyncio``. A change is announced as
(tenant, version) after its commit; every instance drops older enforcers of that
tenant. redis-py's asyncio pub/sub does not reconnect by itself and loses what was
published while away, so the loop reconnects on its own and forgets every enforcer
after each (re)subscription. Redis being down never blocks a decision: the registry's
TTL revalidation bounds staleness until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any
from uuid import UUID

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from authz.enforcer import EnforcerRegistry

log = logging.getLogger("meridian.authz")

CHANNEL = "m:policy"
ALL_TENANTS = "*"


class PolicyWatcher:
    def __init__(
        self,
        redis: Redis | RedisCluster | None,
        registry: EnforcerRegistry,
        *,
        channel: str = CHANNEL,
        op_timeout: float = 0.25,
    ) -> None:
        self._redis = redis
        self._registry = registry
        self._channel = channel
        self._timeout = op_timeout
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        self.last_lag: float | None = None  # seconds from publish to receipt, last message

    async def start(self) -> None:
        if self._redis is not None and self._task is None:
            self._task = asyncio.create_task(self._subscribe_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.subscribed.clear()

    async def publish(self, tenant_id: UUID, version: int) -> bool:
        """Announce a committed change; False if Redis could not be told (the change
        still applies here at once and elsewhere after the registry's TTL)."""
        return await self._send({"t": str(tenant_id), "v": version, "ts": time.time()})

    async def publish_templates_changed(self) -> bool:
        """The shared role templates changed (a deploy): every instance reloads every
        tenant, older code included, since templates are read from the database."""
        return await self._send({"t": ALL_TENANTS, "ts": time.time()})

    async def _send(self, payload: dict[str, Any]) -> bool:
        if self._redis is None:
            return False
        message = orjson.dumps(payload)
        try:
            await asyncio.wait_for(self._redis.publish(self._channel, message), self._timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("policy change of %s not announced: %r", payload["t"], exc)
            return False
        return True

    async def _subscribe_forever(self) -> None:
        assert self._redis is not None
        backoff = 0.1
        while True:
            try:
                if isinstance(self._redis, RedisCluster):
                    # Cluster pub/sub needs the slot map before it can pick a node.
                    await self._redis.initialize()
                pubsub = self._redis.pubsub()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("policy watcher cannot connect: %r", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            try:
                await pubsub.subscribe(self._channel)
                # Announcements may have been missed while not subscribed.
                self._registry.clear()
                self.subscribed.set()
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        # Idle: a ping notices a half-open socket within seconds.
                        await asyncio.wait_for(pubsub.ping(), 2.0)
                        continue
                    if message.get("type") == "message":  # not the pings' pongs
                        self._apply(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: start over with a fresh connection
                self.subscribed.clear()
                log.warning("policy watcher lost its connection: %r", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _apply(self, data: Any) -> None:
        try:
            msg = orjson.loads(data)
            if msg["t"] == ALL_TENANTS:
                self._registry.clear()
                return
            tenant_id = UUID(str(msg["t"]))
            version = int(msg["v"])
        except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
            log.warning("ignoring malformed policy announcement")
            return
        self._registry.notice(tenant_id, version)
        sent = msg.get("ts")
        if isinstance(sent, float | int):
            self.last_lag = max(0.0, time.time() - sent)
