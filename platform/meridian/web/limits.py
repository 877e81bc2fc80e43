"""Refuses request bodies over a size limit before they are read into memory."""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meridian.errors import PayloadTooLarge, problem_body
from meridian.web.responses import problem_response


class BodySizeLimit:
    """Pure ASGI middleware: checks Content-Length up front and counts chunked bodies.

    ``max_bytes`` holds for every path but those an entry of ``paths`` matches, which
    take that entry's limit instead (the batch routes, whose 1,000 items need more).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        paths: Sequence[tuple[re.Pattern[str], int]] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = tuple(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        if self.paths:
            path = scope.get("path", "")
            limit = next((n for pattern, n in self.paths if pattern.match(path)), limit)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = limit + 1
                if declared > limit:
                    await self._refuse(scope, receive, send, limit)
                    return
                break
        seen = 0
        overflow = False
        started = False

        async def limited_receive() -> Message:
            nonlocal seen, overflow
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    overflow = True
                    raise PayloadTooLarge(f"The request body exceeds {limit} bytes.")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if overflow and not started:
                # Whatever the app made of the aborted read (FastAPI turns any error while
                # parsing a body into a 400), the answer is the 413 sent below.
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not overflow or started:
                raise
        if overflow and not started:
            await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        err = PayloadTooLarge(f"The request body exceeds {limit} bytes.")
        body = problem_body(
            err.status_code, err.type, err.title, err.detail, instance=scope.get("path")
        )
        await problem_response(body, {"Connection": "close"})(scope, receive, send)
