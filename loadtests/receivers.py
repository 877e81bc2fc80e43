"""Small real HTTP servers on 127.0.0.1 that record what they receive and fail on demand:
the webhook receivers and the systems a saga calls, in tests (``tests.fixtures.receivers``)
and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it arrived

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """Answers ``status`` (200) to everything, unless ``fail_next`` or ``answer`` says
    otherwise; ``requests`` holds everything received, in order."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    status: int = 200
    body: bytes = b'{"ok": true}'
    # Answer this many requests with ``failure`` first (then ``status``).
    failures_left: int = 0
    failure: int = 500
    # Seconds to wait before answering (a slow system).
    delay: float = 0.0
    # Decides the status per request when set (wins over everything above).
    answer: Callable[[Received], int] | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def fail_next(self, count: int, status: int = 500) -> None:
        self.failures_left, self.failure = count, status

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def handle(self, request: Request) -> Response:
        got = Received(
            request.method,
            request.url.path,
            {k.lower(): v for k, v in request.headers.items()},
            await request.body(),
            time.monotonic(),
        )
        self.requests.append(got)
        self.arrived.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.answer is not None:
            status = self.answer(got)
        elif self.failures_left > 0:
            self.failures_left -= 1
            status = self.failure
        else:
            status = self.status
        return Response(self.body, status, media_type="application/json")


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    """A ``Receiver`` listening on a free port of 127.0.0.1 for the block's length."""
    state = Receiver()
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    app = Starlette(routes=[Route("/{path:path}", state.handle, methods=methods)])
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        server.should_exit = True
        await task
