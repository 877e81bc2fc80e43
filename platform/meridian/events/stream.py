"""The live event stream: ``GET /v1/stream`` (Server-Sent Events).

A stream starts where its caller says (``Last-Event-ID``, else ``?after=``, else now),
catches up from the tenant's log, then follows the process's hub
(``meridian.events.hub``). It keeps the last seq it has accounted for and never trusts
the hub for completeness: an entry whose seq is not the next one, a hub that restarted
(it reads on from the broker's tail) or a hub that is down (polled every second) all
send the stream back to the log (``log.page``, the query of ``GET /v1/events``), so a
client sees every event it may see once, in order, and resumes with ``Last-Event-ID``
without a gap.

Who sees what is decided as in ``GET /v1/events``: a caller whose record scope is
limited gets every live event re-read through the log with its scope's predicate (the
hub's copy only says that something happened up to that seq); a caller who sees every
record gets the hub's copy, filtered by kind and type in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from meridian.crud import endpoints
from meridian.deps import CanReadEvents, TenantAccess, record_viewer
from meridian.errors import Gone, MeridianError, ValidationFailed
from meridian.events import log
from meridian.events.hub import SHUTDOWN, TOO_SLOW, LiveStreams, Subscription
from meridian.events.router import AfterQuery, TypeQuery, check_retained, cursor_value
from meridian.web.openapi import problems
from meridian.web.responses import dumps

logger = logging.getLogger("meridian.events.stream")

router = APIRouter(prefix="/v1/stream", tags=["events"])

# While the hub is down (or not yet reading), how often a stream reads the log.
POLL_INTERVAL = 1.0
# Events per log read; a catch-up pages through the log this many at a time.
BATCH = 500
# What a client is told to wait before reconnecting (the SSE retry field, ms).
RECONNECT_MS = 2000
# Why a stream ends, sent as its last frame (event: close).
REASONS = {
    TOO_SLOW: "The client did not read events as fast as they came; reconnect with "
    "Last-Event-ID to resume where it stopped.",
    SHUTDOWN: "The server is shutting down; reconnect with Last-Event-ID.",
    "token_expired": "The access token has expired; reconnect with a new token and Last-Event-ID.",
}


class TooManyStreams(MeridianError):
    status_code = 429
    type_slug = "too-many-streams"
    title = "Too many open streams"


LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        description="The id (seq) of the last event received: the stream resumes after it "
        "(wins over ?after=).",
        pattern=r"^[0-9]{1,19}$",
    ),
]


@router.get(
    "",
    # An endless text/event-stream has no place in the JSON contract the OpenAPI
    # document is held to (docs/stream.md describes it).
    include_in_schema=False,
    openapi_extra=problems(Gone, ValidationFailed, TooManyStreams),
)
async def stream_events(
    request: Request,
    access: CanReadEvents,
    after: AfterQuery = None,
    type: TypeQuery = None,
    last_event_id: LastEventId = None,
) -> Response:
    """The tenant's events as they happen, as Server-Sent Events (``id``: the seq,
    ``event``: the type, ``data``: the event), from ``Last-Event-ID`` or ``after``."""
    types = log.TypeFilter.parse(type)
    tenant_id = access.tenant.tenant_id
    resume = last_event_id if last_event_id is not None else after
    await log.catch_up(access)
    if resume is not None:
        start = cursor_value(resume)
        newest = await check_retained(access, start)  # 410 before the stream starts
        if start > newest:
            # A page ahead of the log is empty; a stream from there would stay silent
            # until the log caught up with a number the client invented: refused.
            raise ValidationFailed(
                f"Last-Event-ID: no event {start} yet; the newest is {newest}.",
                errors=[
                    {
                        "loc": ["header", "Last-Event-ID"],
                        "msg": "ahead of the log",
                        "type": "value_error",
                    }
                ],
            )
    else:
        _oldest, start = await endpoints.read(access, lambda conn: log.bounds(conn, tenant_id))
    streams: LiveStreams = request.app.state.live_streams
    stream_id = uuid.uuid4().hex
    refused = await streams.leases.acquire(tenant_id, stream_id)
    if refused is not None:
        raise TooManyStreams(
            f"The tenant has {streams.leases.limit} streams open, its limit; close one or "
            "retry later.",
            headers={"Retry-After": str(refused.retry_after)},
        )
    stream = LiveStream(access, streams, stream_id, types, start)
    return EventSourceResponse(
        stream.frames(),
        # Our own heartbeat (it renews the lease too), not sse-starlette's ping.
        ping=0,
        sep="\n",
        headers={"Cache-Control": "no-store"},
    )


class LiveStream:
    """One connection: its cursor, its filters, and the loop that feeds it."""

    def __init__(
        self,
        access: TenantAccess,
        streams: LiveStreams,
        stream_id: str,
        types: log.TypeFilter,
        start: int,
    ) -> None:
        self.access = access
        self.tenant_id = access.tenant.tenant_id
        self.viewer = record_viewer(access)
        self.kinds = log.readable_kinds(access.can)
        self.kind_set = frozenset(self.kinds)
        self.types = types
        self.hub = streams.hub
        self.leases = streams.leases
        self.heartbeat = streams.heartbeat
        self.stream_id = stream_id
        # Every event up to ``last`` was sent, or is not for this caller.
        self.last = start
        self.expires_at = float(access.principal.expires_at)

    # -- frames ------------------------------------------------------------------------
    @staticmethod
    def frame(event: dict[str, Any]) -> ServerSentEvent:
        return ServerSentEvent(
            data=dumps(event).decode(), event=str(event["type"]), id=str(event["seq"])
        )

    @staticmethod
    def closing(reason: str) -> ServerSentEvent:
        body = {"reason": reason, "detail": REASONS.get(reason, reason)}
        return ServerSentEvent(data=dumps(body).decode(), event="close")

    # -- reading the log --------------------------------------------------------------
    async def read_until(self, until: int) -> AsyncIterator[list[dict[str, Any]]]:
        """The caller's events in (last, until], a page at a time; ``last`` is ``until``
        afterwards (the events between were not for this caller)."""
        while self.last < until:
            rows = await self.page(self.last, until)
            if len(rows) < BATCH:
                self.last = until
            else:
                self.last = int(rows[-1]["seq"])
            if rows:
                yield rows

    async def page(self, after: int, until: int) -> list[dict[str, Any]]:
        return await endpoints.read(
            self.access,
            lambda conn: log.page(
                conn,
                self.tenant_id,
                self.viewer,
                kinds=self.kinds,
                types=self.types,
                after=after,
                until=until,
                limit=BATCH,
            ),
        )

    async def newest(self) -> int:
        await log.catch_up(self.access)
        _oldest, newest = await endpoints.read(
            self.access, lambda conn: log.bounds(conn, self.tenant_id)
        )
        return newest

    async def poll(self) -> AsyncIterator[list[dict[str, Any]]]:
        """Whatever the log holds beyond ``last``."""
        newest = await self.newest()
        async for rows in self.read_until(newest):
            yield rows

    async def live(self, entries: Sequence[dict[str, Any]]) -> AsyncIterator[list[dict[str, Any]]]:
        """The hub's entries: in memory for a caller who sees every record, when they
        follow ``last`` without a gap; through the log otherwise."""
        top = max(int(e["seq"]) for e in entries)
        if top <= self.last:
            return  # delivered again (the broker is at least once), or already read
        if self.viewer is not None:
            async for rows in self.read_until(top):
                yield rows
            return
        for event in entries:
            seq = int(event["seq"])
            if seq <= self.last:
                continue
            if seq > self.last + 1:
                # A gap: what the hub did not bring (a restart, an entry trimmed) is read.
                async for rows in self.read_until(seq):
                    yield rows
                continue
            self.last = seq
            if event["record"]["kind"] in self.kind_set and self.types.matches(event["type"]):
                yield [event]

    # -- the loop ----------------------------------------------------------------------
    async def frames(self) -> AsyncIterator[ServerSentEvent]:
        sub: Subscription | None = None
        try:
            yield ServerSentEvent(comment="meridian event stream", retry=RECONNECT_MS)
            # Catch up before subscribing: a long catch-up does not fill the buffer.
            try:
                async for rows in self.poll():
                    for event in rows:
                        yield self.frame(event)
            except Exception as exc:
                logger.warning("stream catch-up of tenant %s: %s", self.tenant_id, exc)
            sub = self.hub.subscribe(self.tenant_id)
            async for frame in self.follow(sub):
                yield frame
        finally:
            if sub is not None:
                self.hub.unsubscribe(sub)
            self.leases.release(self.tenant_id, self.stream_id)

    async def follow(self, sub: Subscription) -> AsyncIterator[ServerSentEvent]:
        synced: int | None = None  # the hub's epoch the log was last read up to
        next_beat = time.monotonic() + self.heartbeat
        clock_offset = time.time() - time.monotonic()
        while True:
            if sub.closed is not None:
                yield self.closing(sub.closed)
                return
            now = time.monotonic()
            if now + clock_offset >= self.expires_at:
                yield self.closing("token_expired")
                return
            entries = sub.take()
            try:
                if not self.hub.live or synced != self.hub.epoch:
                    # Hub down, not yet reading, or reading again from its tail: the log
                    # has what it may have missed.
                    epoch = self.hub.epoch if self.hub.live else None
                    async for rows in self.poll():
                        for event in rows:
                            yield self.frame(event)
                    synced = epoch
                if entries:
                    async for rows in self.live(entries):
                        for event in rows:
                            yield self.frame(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The shard cannot be read right now: the stream stays open and the
                # next turn reads from ``last`` again.
                logger.warning("stream of tenant %s: %s", self.tenant_id, exc)
                synced = None
            now = time.monotonic()
            if now >= next_beat:
                yield ServerSentEvent(comment="heartbeat")
                await self.leases.refresh(self.tenant_id, self.stream_id)
                next_beat = now + self.heartbeat
            wait = min(POLL_INTERVAL, next_beat - now, self.expires_at - clock_offset - now)
            if wait > 0 and not sub.ready.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sub.ready.wait(), timeout=wait)
