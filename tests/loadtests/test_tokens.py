"""The load test's token cache: one token per client, refreshed before it expires."""

from __future__ import annotations

from loadtests.credentials import Client
from loadtests.tokens import TokenCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tokens_are_shared_and_refreshed_before_expiry() -> None:
    clock = Clock()
    cache = TokenCache(clock)
    client = Client("mc_a", "secret")
    issued: list[str] = []

    def fetch(c: Client) -> tuple[str, float]:
        issued.append(f"token-{len(issued)}")
        return issued[-1], 900.0

    assert cache.get(client, fetch) == "token-0"
    clock.now += 600
    assert cache.get(client, fetch) == "token-0"  # still well within its lifetime
    # 20% of 900 s before expiry, a new one is fetched: requests never carry a token
    # that expires on the way.
    clock.now += 121
    assert cache.get(client, fetch) == "token-1"
    assert issued == ["token-0", "token-1"]


def test_a_refused_token_is_dropped_once() -> None:
    cache = TokenCache(Clock())
    client = Client("mc_b", "secret")
    tokens = iter(["first", "second"])
    assert cache.get(client, lambda c: (next(tokens), 900.0)) == "first"
    cache.invalidate(client, "stale-from-another-user")  # not ours: kept
    assert cache.get(client, lambda c: (next(tokens), 900.0)) == "first"
    cache.invalidate(client, "first")
    assert cache.get(client, lambda c: (next(tokens), 900.0)) == "second"


def test_a_failed_fetch_is_not_cached() -> None:
    cache = TokenCache(Clock())
    client = Client("mc_c", "secret")
    assert cache.get(client, lambda c: None) is None
    assert cache.get(client, lambda c: ("late", 900.0)) == "late"
