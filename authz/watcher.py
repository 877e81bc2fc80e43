"""Policy-change announcements between API instances over Redis pub/sub.

The published Casbin watchers pin old casbin and redis versions and call back from
threads; this one is a few lines on ``primitives.pubsub``. A change is announced as
(tenant, version) after its commit; every instance drops older enforcers of that
tenant. What is published while a subscriber is away is lost, so every enforcer is
forgotten after each (re)subscription. Redis being down never blocks a decision: the
registry's TTL revalidation bounds staleness until it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from uuid import UUID

import orjson
from redis.exceptions import RedisError

from authz.enforcer import EnforcerRegistry
from primitives.pubsub import PubSubListener, RedisClient

log = logging.getLogger("meridian.authz")

CHANNEL = "m:policy"
ALL_TENANTS = "*"


class PolicyWatcher:
    def __init__(
        self,
        redis: RedisClient | None,
        registry: EnforcerRegistry,
        *,
        channel: str = CHANNEL,
        op_timeout: float = 0.25,
    ) -> None:
        self._redis = redis
        self._registry = registry
        self._channel = channel
        self._timeout = op_timeout
        # Announcements may have been missed while not subscribed: forget every enforcer.
        self._listener = (
            PubSubListener(
                redis,
                channel,
                self._apply,
                on_subscribed=self._subscribed,
                on_unsubscribed=self._unsubscribed,
                name="policy watcher",
                logger=log,
            )
            if redis is not None
            else None
        )
        self.subscribed = self._listener.subscribed if self._listener else asyncio.Event()
        self.last_lag: float | None = None  # seconds from publish to receipt, last message

    def _subscribed(self) -> None:
        self._registry.clear()
        self._registry.live = True

    def _unsubscribed(self) -> None:
        # Announcements may be missed from now on: back to the registry's short TTL.
        self._registry.live = False

    async def start(self) -> None:
        if self._listener is not None:
            self._listener.start()

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()

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
            async with asyncio.timeout(self._timeout):
                await self._redis.publish(self._channel, message)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("policy change of %s not announced: %r", payload["t"], exc)
            return False
        return True

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
