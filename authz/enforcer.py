"""Per-tenant Casbin enforcers: loaded lazily, kept in an LRU, swapped whole on reload,
with every decision memoised per (tenant, policy version, role, object, action).

pycasbin's ``enforce`` scans every rule and evaluates the matcher per rule (~200 µs for
this model), so it runs only on a memo miss; a hit is a dict look-up. The enforcer is a
plain synchronous ``casbin.Enforcer`` fed from a snapshot read asynchronously
beforehand: a reload builds a new one and swaps the reference, so no request ever sees a
half-loaded policy (unlike ``load_filtered_policy``, which clears the live model first).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

import casbin
from casbin.persist.adapter import Adapter

from authz.policy import MODEL_TEXT, PolicySnapshot, Rule
from primitives.localcache import LocalCache
from primitives.singleflight import SingleFlight

# Decisions kept per tenant policy; in practice far fewer (roles times catalogue entries).
MEMO_MAX = 4096
# When the control plane cannot be read, an expired policy is kept this much longer
# (and tried again after), rather than failing every request of the tenant.
STALE_GRACE = 5.0

log = logging.getLogger("meridian.authz")


class PolicyUnavailable(Exception):
    """A tenant's policy could not be loaded and there is no earlier one to fall back on."""


class _SnapshotAdapter(Adapter):  # type: ignore[misc]
    """Feeds rules already read from the database into a fresh model (no I/O here)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._rules = rules

    def load_policy(self, model: object) -> None:
        sections = model.model  # type: ignore[attr-defined]
        for rule in self._rules:
            sections[rule[0][0]][rule[0]].policy.append(list(rule[1:]))


class CasbinEnforcer:
    """The typed face of one ``casbin.Enforcer`` (the library has no type hints)."""

    __slots__ = ("_enforcer",)

    def __init__(self, rules: Sequence[Rule]) -> None:
        model = casbin.Enforcer.new_model(text=MODEL_TEXT)
        # The constructor loads the policy through the adapter and builds role links.
        self._enforcer = casbin.Enforcer(model, _SnapshotAdapter(rules))

    def enforce(self, sub: str, dom: str, obj: str, act: str) -> bool:
        return bool(self._enforcer.enforce(sub, dom, obj, act))


class TenantPolicy:
    """One tenant's loaded policy: an enforcer, its version, and the decision memo.

    A request keeps the instance it started with, so all its checks agree even if the
    policy is swapped meanwhile.
    """

    __slots__ = (
        "_enforcer",
        "_memo",
        "deadline",
        "domain",
        "hold_until",
        "roles",
        "snapshot",
        "tenant_id",
        "version",
    )

    def __init__(self, snapshot: PolicySnapshot, deadline: float) -> None:
        self.snapshot = snapshot
        self.tenant_id = snapshot.tenant_id
        self.version = snapshot.version
        self.domain = snapshot.domain
        self.deadline = deadline
        # Trusted until then while announcements arrive (the registry sets it).
        self.hold_until = deadline
        self.roles = snapshot.role_names  # every role the tenant has (templates included)
        self._enforcer = CasbinEnforcer(snapshot.effective_rules())
        self._memo: dict[tuple[str, str, str], bool] = {}

    def allows(self, role: str, obj: str, act: str) -> bool:
        key = (role, obj, act)
        decided = self._memo.get(key)
        if decided is not None:
            return decided
        # CPU only (no I/O): fine on the event loop, and only on a memo miss.
        decided = self._enforcer.enforce(role, self.domain, obj, act)
        if len(self._memo) >= MEMO_MAX:
            self._memo.clear()  # unknown role names must not grow it without bound
        self._memo[key] = decided
        return decided

    def enforce_uncached(self, role: str, obj: str, act: str) -> bool:
        """Casbin's answer without the memo (tests and benchmarks)."""
        return self._enforcer.enforce(role, self.domain, obj, act)


class PolicyLoader(Protocol):
    async def load(self, tenant_id: UUID) -> PolicySnapshot: ...

    async def version(self, tenant_id: UUID) -> int: ...


@dataclass
class RegistryStats:
    loads: int = 0  # enforcers built
    revalidations: int = 0  # TTL ran out, the version was checked
    evictions: int = 0  # dropped by the LRU, a newer version, or a reset


class EnforcerRegistry:
    """The per-process set of tenant policies.

    Staleness is bounded three ways: a change made here is applied here at once
    (:meth:`notice`); one made elsewhere arrives through the watcher within a second;
    and when Redis is unreachable, an entry older than ``ttl`` is revalidated against
    the stored version before use. While the watcher's subscription is confirmed
    (``live``), announcements are what keeps entries current, so one is revalidated
    only after ``hold`` (a safety net for an announcement that was never published).
    """

    def __init__(
        self,
        loader: PolicyLoader,
        *,
        max_tenants: int = 2000,
        ttl: float = 30.0,
        hold: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loader = loader
        self._ttl = ttl
        self._hold = ttl if hold is None else max(hold, ttl)
        # Set by the watcher while its subscription is confirmed.
        self.live = False
        self._clock = clock
        # No TTL in the LRU itself: an expired policy stays, to be revalidated by one
        # version read (or kept for a while when the control plane cannot be read).
        self._entries: LocalCache[TenantPolicy] = LocalCache(max_tenants, on_evict=self._evicted)
        # One load per tenant however many requests arrive cold.
        self._loads: SingleFlight[UUID, TenantPolicy] = SingleFlight()
        # Highest version announced per tenant: a load that raced with a change and
        # read an older version is not installed as if it were current.
        self._announced: LocalCache[int] = LocalCache(2 * max_tenants)
        # Bumped by clear(): a load started before a reset must not repopulate.
        self._epoch = 0
        self.stats = RegistryStats()

    def __len__(self) -> int:
        return len(self._entries)

    def _evicted(self, _tenant_id: Hashable, _policy: TenantPolicy) -> None:
        self.stats.evictions += 1

    def cached(self, tenant_id: UUID) -> TenantPolicy | None:
        """The hot path: the tenant's fresh policy if loaded, without awaiting."""
        entry = self._entries.get(tenant_id)
        if entry is None:
            return None
        if (entry.hold_until if self.live else entry.deadline) < self._clock():
            return None
        return entry

    async def get(self, tenant_id: UUID) -> TenantPolicy:
        entry = self.cached(tenant_id)
        if entry is not None:
            return entry
        return await self._loads.run(tenant_id, self._refresh, tenant_id)

    async def _refresh(self, tenant_id: UUID) -> TenantPolicy:
        try:
            return await self._reload(tenant_id)
        except Exception as exc:
            stale = self._entries.get(tenant_id)
            if stale is None:
                raise PolicyUnavailable(f"policy of tenant {tenant_id} unavailable") from exc
            # Revalidation failed: the last policy known beats refusing everyone.
            log.warning("policy of %s not revalidated, kept for now: %r", tenant_id, exc)
            stale.deadline = stale.hold_until = self._clock() + min(self._ttl, STALE_GRACE)
            return stale

    async def _reload(self, tenant_id: UUID) -> TenantPolicy:
        epoch = self._epoch
        announced = self._announced_version(tenant_id)
        stale = self._entries.get(tenant_id)
        if stale is not None and stale.version >= announced:
            # Expired by TTL only: one tiny read tells whether the rules changed.
            self.stats.revalidations += 1
            version = await self._loader.version(tenant_id)
            if version == stale.version and self._entries.get(tenant_id) is stale:
                now = self._clock()
                stale.deadline, stale.hold_until = now + self._ttl, now + self._hold
                return stale
        snapshot = await self._loader.load(tenant_id)
        for _ in range(2):
            if snapshot.version >= self._announced_version(tenant_id):
                break
            snapshot = await self._loader.load(tenant_id)
        now = self._clock()
        entry = TenantPolicy(snapshot, now + self._ttl)
        entry.hold_until = now + self._hold
        self.stats.loads += 1
        if epoch == self._epoch and entry.version >= self._announced_version(tenant_id):
            self._entries.set(tenant_id, entry)
        return entry

    def _announced_version(self, tenant_id: UUID) -> int:
        announced = self._announced.get(tenant_id)
        return -1 if announced is None else announced

    def notice(self, tenant_id: UUID, version: int) -> None:
        """A tenant's policy reached ``version`` (here or on another instance): drop an
        older enforcer; the next request loads the new rules."""
        if self._announced_version(tenant_id) < version:
            self._announced.set(tenant_id, version)
        entry = self._entries.get(tenant_id)
        if entry is not None and entry.version < version:
            self._entries.delete(tenant_id)
            self.stats.evictions += 1

    def evict(self, tenant_id: UUID) -> None:
        if self._entries.delete(tenant_id):
            self.stats.evictions += 1

    def clear(self) -> None:
        """Forget every enforcer (after the watcher reconnects: it may have missed
        announcements)."""
        self._epoch += 1
        self.stats.evictions += len(self._entries)
        self._entries.clear()
