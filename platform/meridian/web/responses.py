"""Fast JSON responses: orjson straight to bytes, no response-model round trip."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
from starlette.responses import Response
from starlette.types import Message, Send

from meridian.errors import PROBLEM_MEDIA_TYPE


def _default(value: Any) -> Any:
    if isinstance(value, UUID):
        # asyncpg's own UUID subclass, which orjson does not treat as a UUID.
        return str(value)
    if isinstance(value, Decimal):
        # Money travels as a decimal string: a JSON number would lose precision.
        return format(value, "f")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default)


def json_response(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(dumps(content), status_code, headers, media_type="application/json")


def problem_response(body: dict[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return Response(dumps(body), int(body["status"]), headers, media_type=PROBLEM_MEDIA_TYPE)


def adding_headers(send: Send, extra: Callable[[], Iterable[tuple[bytes, bytes]]]) -> Send:
    """``send`` with ``extra()``'s headers appended to the response's start: how a pure
    ASGI middleware adds headers to every answer, errors included."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra()]
        await send(message)

    return sending
