"""One call of a saga's step: the HTTP request, and what its answer means.

2xx completes the step; anything else (another status, a redirect, which is not
followed, a timeout, a refused or unreachable target) is a failed attempt. Only the
start of an answer is read and kept (``EXCERPT_BYTES``): a receiver's body is a result
to pass on to the next steps, not a document to store.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from meridian.fulfilment.service import Attempt, Outcome
from meridian.web.responses import dumps
from meridian.web.targets import TargetRefused, check_resolved

EXCERPT_BYTES = 4096
ERROR_CHARS = 300
USER_AGENT = "Meridian-Fulfilment/1"


def _excerpt(raw: bytes, complete: bool) -> Any:
    """The body as JSON when it is whole JSON, else the start of its text."""
    if complete and raw:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return raw.decode("utf-8", errors="replace") if raw else None


async def call(client: httpx.AsyncClient, attempt: Attempt, *, allow_private: bool) -> Outcome:
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": attempt.idempotency_key,
        "User-Agent": USER_AGENT,
    }
    try:
        # The host's addresses now: a name accepted when configured may have changed.
        await check_resolved(attempt.url, allow_private=allow_private)
        request = client.build_request(
            attempt.method,
            attempt.url,
            content=dumps(attempt.body),
            headers=headers,
            timeout=httpx.Timeout(attempt.timeout),
        )
        response = await client.send(request, stream=True)
        try:
            raw = b""
            complete = True
            async for chunk in response.aiter_bytes():
                raw += chunk
                if len(raw) > EXCERPT_BYTES:
                    raw, complete = raw[:EXCERPT_BYTES], False
                    break
        finally:
            await response.aclose()
    except TargetRefused as exc:
        return Outcome(ok=False, error=f"target refused: {exc}")
    except httpx.TimeoutException:
        return Outcome(ok=False, error=f"no answer within {attempt.timeout:g} s")
    except httpx.HTTPError as exc:
        return Outcome(ok=False, error=f"{type(exc).__name__}: {exc}"[:ERROR_CHARS])
    body = _excerpt(raw, complete)
    status = response.status_code
    if 200 <= status < 300:
        return Outcome(ok=True, status=status, result={"status": status, "body": body})
    text = body if isinstance(body, str) else dumps(body).decode() if body is not None else ""
    return Outcome(ok=False, status=status, error=f"HTTP {status}: {text}"[:ERROR_CHARS])
