"""Access tokens per OAuth client, shared by every simulated user of a process.

Real integrations cache their token and refresh it shortly before it expires, so the
token endpoint sees a trickle of requests, not one per API call. Users of one hot tenant
share its token; a lock keeps them from all fetching a new one at the same moment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from loadtests.credentials import Client

# Refresh when less than this share of the lifetime is left (and at least this margin).
REFRESH_SHARE = 0.2
MIN_MARGIN_SECONDS = 30.0

# (token, lifetime in seconds) or None when the token endpoint refused or failed.
Fetch = Callable[[Client], "tuple[str, float] | None"]


@dataclass(slots=True)
class _Entry:
    token: str
    refresh_at: float


class TokenCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        # Locust monkey-patches threading with gevent: these locks yield to other users.
        self._locks: dict[str, threading.Lock] = {}

    def get(self, client: Client, fetch: Fetch) -> str | None:
        entry = self._entries.get(client.client_id)
        if entry is not None and self._clock() < entry.refresh_at:
            return entry.token
        lock = self._locks.setdefault(client.client_id, threading.Lock())
        with lock:
            entry = self._entries.get(client.client_id)
            if entry is not None and self._clock() < entry.refresh_at:
                return entry.token  # another user refreshed it while we waited
            fetched = fetch(client)
            if fetched is None:
                return None
            token, lifetime = fetched
            margin = max(MIN_MARGIN_SECONDS, lifetime * REFRESH_SHARE)
            self._entries[client.client_id] = _Entry(
                token, self._clock() + max(0.0, lifetime - margin)
            )
            return token

    def invalidate(self, client: Client, token: str) -> None:
        """Drop a token the API refused (unless another user already replaced it)."""
        entry = self._entries.get(client.client_id)
        if entry is not None and entry.token == token:
            del self._entries[client.client_id]
