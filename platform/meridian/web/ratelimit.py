"""The API's rate limits: every tenant request takes one from its tenant's quota and
one from its caller's (a user, or a client acting for the tenant), per minute, and one
from its tenant's calls per day, by the tenant's plan unless a platform admin set its
own (``TenantContext.limits``).

``check`` runs in the tenant dependency once the tenant is known (``deps.RequireTenant``),
before anything else is read: over a quota is 429 problem+json with ``Retry-After``.
Every answer to a tenant request then carries the IETF headers
(draft-ietf-httpapi-ratelimit-headers), added by ``RateLimitHeaders`` on the way out,
so errors carry them too::

    RateLimit-Policy: "tenant";q=6000;w=60, "caller";q=1200;w=60, "day";q=2000000;w=86400
    RateLimit: "tenant";r=5998;t=1, "caller";r=1187;t=8, "day";r=1999870;t=6

``r`` is what is left of the quota and ``t`` the seconds until it is whole again. The
counting is ``cache.ratelimit`` (GCRA decided in process, the counts shared by every
instance through Redis a few times a second).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from cache.ratelimit import Quota, RateLimiter, Verdict
from meridian.errors import RateLimited
from meridian.metrics import Metrics
from meridian.principal import Principal
from meridian.settings import PlanLimits, Settings
from meridian.web.responses import adding_headers
from tenancy.context import TenantContext

MINUTE = 60.0
DAY = 86_400.0  # the calls per day are a rolling day (GCRA), not a calendar one
# The request quotas by the name the headers give them, and the limit each enforces.
QUOTA_LIMITS = {
    "tenant": "tenant_per_minute",
    "caller": "caller_per_minute",
    "day": "calls_per_day",
}
_STATE = "ratelimit"


def verdict_of(state: Mapping[str, Any]) -> Verdict | None:
    """The verdict ``check`` left in a request's state (its scope's ``state``)."""
    verdict = state.get(_STATE)
    return verdict if isinstance(verdict, Verdict) else None


def caller_of(principal: Principal) -> str:
    return f"user:{principal.user_id}" if principal.user_id else f"client:{principal.client_id}"


def quotas_of(
    limiter: RateLimiter, limits: PlanLimits, tenant: TenantContext, principal: Principal
) -> tuple[Quota, ...]:
    """The quotas a request of ``principal`` for ``tenant`` counts against. A quota's
    size is in its key: a new limit starts full, whatever the old one left."""
    minute, day = tenant_quotas(limiter, limits, tenant)
    caller = limits.caller_per_minute
    caller_key = limiter.key(str(tenant.tenant_id), f"{caller_of(principal)}/{caller}")
    return (minute, Quota("caller", caller_key, caller, MINUTE), day)


def tenant_quotas(
    limiter: RateLimiter, limits: PlanLimits, tenant: TenantContext
) -> tuple[Quota, Quota]:
    """The tenant's own quotas (of all its callers): per minute, and per day."""
    tenant_key = str(tenant.tenant_id)
    minute, day = limits.tenant_per_minute, limits.calls_per_day
    return (
        Quota("tenant", limiter.key(tenant_key, f"tenant/{minute}"), minute, MINUTE),
        Quota("day", limiter.key(tenant_key, f"day/{day}"), day, DAY),
    )


async def check(
    limiter: RateLimiter,
    settings: Settings,
    metrics: Metrics,
    request: Request,
    tenant: TenantContext,
    principal: Principal,
) -> None:
    """Take the request from its quotas, or refuse it (429)."""
    limits = settings.limits_of(tenant.plan, dict(tenant.limits))
    verdict = limiter.hit(quotas_of(limiter, limits, tenant, principal))
    setattr(request.state, _STATE, verdict)
    spent = verdict.refused_by
    if spent is not None:
        metrics.rate_limited.labels(spent.quota.name).inc()
        per = "day" if spent.quota.period == DAY else "minute"
        raise RateLimited(
            f"The {spent.quota.name} quota of {spent.quota.limit} requests a {per} is "
            f"spent; retry in {_seconds(verdict.retry_after)} s.",
            headers={"Retry-After": str(_seconds(verdict.retry_after))},
            quota=spent.quota.name,
            limit=spent.quota.limit,
        )


def headers(verdict: Verdict) -> list[tuple[bytes, bytes]]:
    policy = ", ".join(
        f'"{s.quota.name}";q={s.quota.limit};w={int(s.quota.period)}' for s in verdict.states
    )
    state = ", ".join(
        f'"{s.quota.name}";r={s.remaining};t={_seconds(s.reset)}' for s in verdict.states
    )
    return [(b"ratelimit-policy", policy.encode()), (b"ratelimit", state.encode())]


def _seconds(value: float) -> int:
    return max(0, math.ceil(value))


class RateLimitHeaders:
    """Pure ASGI middleware: the rate-limit headers on the answer of every request whose
    quotas were checked (its ``Verdict`` in the request's state)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        def extra() -> list[tuple[bytes, bytes]]:
            verdict = verdict_of(scope.get("state") or {})
            return headers(verdict) if verdict is not None else []

        await self.app(scope, receive, adding_headers(send, extra))
