"""The tenant directory behind the two-level cache.

Suspension, resumption and moves invalidate entries at once on every instance, so
while the invalidation feed is live an entry stays in L1 until invalidated (``hold``,
at most its 300 s in Redis). Otherwise it lives ``directory_ttl``: the bound on how
long a suspension takes to reach an instance whose invalidations are lost. A move needs
no such bound: the shard checks the entry's epoch on every transaction and read
(``meridian_enter_tenant`` / ``meridian_read_as``: MR001, MR003), and the router then
re-resolves and retries (``sharding.router._rerouted``).
"""

from __future__ import annotations

from dataclasses import replace
from uuid import UUID

import orjson

from cache.codec import Codec
from cache.core import Policy, TwoLevelCache
from tenancy.context import TenantContext, TenantStatus
from tenancy.directory import TenantDirectory

KIND = "directory"


def _encode(ctx: TenantContext) -> bytes:
    return orjson.dumps(
        [
            str(ctx.tenant_id),
            ctx.slug,
            ctx.shard_id,
            ctx.region,
            ctx.status.value,
            ctx.epoch,
            ctx.plan,
            dict(ctx.limits),
        ]
    )


def _decode(raw: bytes) -> TenantContext:
    tid, slug, shard_id, region, status, epoch, *rest = orjson.loads(raw)
    ctx = TenantContext(UUID(tid), slug, shard_id, region, TenantStatus(status), int(epoch))
    if not rest:
        return ctx  # written before plans were cached: the defaults until it expires
    plan, limits = rest
    return replace(ctx, plan=plan, limits=tuple(sorted(limits.items())))


CODEC: Codec[TenantContext] = Codec(_encode, _decode)


class CachedDirectory:
    def __init__(
        self, loader: TenantDirectory, cache: TwoLevelCache, *, l1_ttl: float, hold: float = 0.0
    ) -> None:
        self.loader = loader
        self._cache = cache
        self._policy = Policy(ttl=300, l1_ttl=l1_ttl, negative_ttl=min(5.0, l1_ttl), hold=hold)

    async def resolve(self, tenant_id: UUID) -> TenantContext | None:
        return await self._cache.get_or_load(
            str(tenant_id), KIND, "ctx", lambda: self.loader.load(tenant_id), CODEC, self._policy
        )

    async def load(self, tenant_id: UUID) -> TenantContext | None:
        """Uncached read (admin paths that must see the latest state)."""
        return await self.loader.load(tenant_id)

    async def invalidate(self, tenant_id: UUID) -> None:
        await self._cache.invalidate(str(tenant_id), KIND)
