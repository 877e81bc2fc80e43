"""The credentials file the seeder writes (``meridian seed --out``) and the Zipf skew
that picks a tenant from it (a few hot tenants, a long tail of quiet ones)."""

from __future__ import annotations

import bisect
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")
# Under the dev platform's own ignored folder: the file holds client secrets, and a run's
# reports are nobody else's business either.
RESULTS_DIR = Path(".meridian/loadtest")
DEFAULT_CREDENTIALS = RESULTS_DIR / "credentials.json"


class CredentialsError(Exception):
    """The credentials file is missing or does not hold usable clients."""


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    client_secret: str


@dataclass(frozen=True, slots=True)
class TenantCredentials:
    slug: str
    id: str
    region: str
    shard_id: str
    client: Client
    owner_ids: tuple[str, ...] = ()
    # The service desk: its agents' user ids and a client acting as a support agent
    # (absent from files written before the seeder made them).
    agent_ids: tuple[str, ...] = ()
    support_client: Client | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    tenants: tuple[TenantCredentials, ...]
    admin: Client | None
    prefix: str | None

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(sorted({t.region for t in self.tenants}))

    def tenant(self, slug: str | None) -> TenantCredentials:
        """The tenant of this slug; none named: the first (the hottest of the Zipf skew)."""
        if not slug:
            return self.tenants[0]
        for tenant in self.tenants:
            if tenant.slug == slug:
                return tenant
        raise CredentialsError(f"no seeded tenant {slug!r} in the credentials file")

    def shard_neighbours(self, tenant: TenantCredentials) -> tuple[TenantCredentials, ...]:
        """The other tenants on ``tenant``'s shard (in file order, so still by rank)."""
        return tuple(t for t in self.tenants if t.shard_id == tenant.shard_id and t.id != tenant.id)

    @classmethod
    def load(cls, path: Path) -> Credentials:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise CredentialsError(
                f"{path} does not exist: run `meridian seed --out {path}` first"
            ) from exc
        except (OSError, ValueError) as exc:
            raise CredentialsError(f"{path} is unreadable: {exc}") from exc
        if not isinstance(data, dict):
            raise CredentialsError(f"{path} is not a credentials file")
        tenants = tuple(t for t in map(_tenant, data.get("tenants") or []) if t is not None)
        if not tenants:
            raise CredentialsError(f"{path} holds no tenant with client credentials")
        return cls(tenants=tenants, admin=_client(data.get("admin")), prefix=data.get("prefix"))


def _client(raw: Any) -> Client | None:
    if not isinstance(raw, dict):
        return None
    client_id, secret = raw.get("client_id"), raw.get("client_secret")
    if not isinstance(client_id, str) or not isinstance(secret, str) or not secret:
        return None
    return Client(client_id, secret)


def _tenant(raw: Any) -> TenantCredentials | None:
    client = _client(raw)
    if client is None or raw.get("seeded") is False:
        return None
    return TenantCredentials(
        slug=str(raw.get("slug", "")),
        id=str(raw.get("id", "")),
        region=str(raw.get("region", "")),
        shard_id=str(raw.get("shard_id", "")),
        client=client,
        owner_ids=tuple(str(o) for o in raw.get("owner_ids") or ()),
        agent_ids=tuple(str(a) for a in raw.get("agent_ids") or ()),
        support_client=_client(raw.get("support_client")),
    )


class Zipf(Generic[T]):
    """Picks item k (1-based rank, in the given order) with probability ∝ 1 / k**s.

    With s = 1.1 and 100 tenants the hottest gets about 23% of the picks and the top ten
    about 63%: a few big customers and a long tail, as on a SaaS product.
    """

    def __init__(self, items: Sequence[T], s: float) -> None:
        if not items:
            raise ValueError("no items to pick from")
        if s < 0:
            raise ValueError("the Zipf exponent cannot be negative")
        self.items = tuple(items)
        weights = (1.0 / math.pow(rank, s) for rank in range(1, len(items) + 1))
        self._cumulative = list(accumulate(weights))

    def share(self, index: int) -> float:
        """The probability of the item at ``index`` (0-based)."""
        before = self._cumulative[index - 1] if index else 0.0
        return (self._cumulative[index] - before) / self._cumulative[-1]

    def pick(self, rng: random.Random) -> T:
        point = rng.random() * self._cumulative[-1]
        index = bisect.bisect_right(self._cumulative, point)
        return self.items[min(index, len(self.items) - 1)]
