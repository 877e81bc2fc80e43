"""One call of a saga's step: the HTTP request, and what its answer means.

2xx completes the step; anything else (another status, a redirect, which is not
followed, a timeout, a refused or unreachable target) is a failed attempt. Only the
start of an answer is read and kept (``EXCERPT_BYTES``): a receiver's body is a result
to pass on to the next steps, not a document to store.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from meridian.fulfilment.service import Attempt, Outcome
from meridian.web.responses import dumps
from meridian.web.targets import TargetRefused, check_url, failure, read_start

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


async def call(client: aiohttp.ClientSession, attempt: Attempt, *, allow_private: bool) -> Outcome:
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": attempt.idempotency_key,
        "User-Agent": USER_AGENT,
    }
    try:
        # The URL's form and host; its addresses are checked as the call connects
        # (targets.CheckedResolver): a name accepted when configured may have changed.
        check_url(attempt.url, allow_private=allow_private)
        async with client.request(
            attempt.method,
            attempt.url,
            data=dumps(attempt.body),
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=attempt.timeout),
        ) as response:
            raw = await read_start(response, EXCERPT_BYTES + 1)
            status = response.status
    except TargetRefused as exc:
        return Outcome(ok=False, error=f"target refused: {exc}")
    except TimeoutError:
        return Outcome(ok=False, error=f"no answer within {attempt.timeout:g} s")
    except aiohttp.ClientError as exc:
        return Outcome(ok=False, error=failure(exc)[:ERROR_CHARS])
    complete = len(raw) <= EXCERPT_BYTES
    body = _excerpt(raw[:EXCERPT_BYTES], complete)
    if 200 <= status < 300:
        return Outcome(ok=True, status=status, result={"status": status, "body": body})
    text = body if isinstance(body, str) else dumps(body).decode() if body is not None else ""
    return Outcome(ok=False, status=status, error=f"HTTP {status}: {text}"[:ERROR_CHARS])
