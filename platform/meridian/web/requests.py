"""Each request's identity for its logs: ``X-Request-ID`` as the client (or a proxy in
front) sent it, when it is a sane token, else a new one; answered back in the same
header; and the trace id of a W3C ``traceparent``, so log lines join the caller's
trace. Pure ASGI, the outermost layer, so every line a request causes carries them
(``meridian.logs``).
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Receive, Scope, Send

from meridian import logs
from meridian.web.responses import adding_headers

HEADER = "X-Request-ID"
_VALID_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
# version-traceid-parentid-flags; an all-zero trace id is invalid (W3C Trace Context).
_TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_ZERO_TRACE = b"0" * 32


def trace_of(value: bytes | None) -> str | None:
    found = _TRACEPARENT.match(value.strip().lower()) if value else None
    if found is None or found[1] == _ZERO_TRACE:
        return None
    return found[1].decode()


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = traceparent = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value
            elif name == b"traceparent":
                traceparent = value
        rid = given.decode() if given and _VALID_ID.match(given) else uuid.uuid4().hex
        request_token = logs.request_id.set(rid)
        trace_token = logs.trace_id.set(trace_of(traceparent))
        header = [(b"x-request-id", rid.encode())]
        try:
            await self.app(scope, receive, adding_headers(send, lambda: header))
        finally:
            logs.trace_id.reset(trace_token)
            logs.request_id.reset(request_token)
