"""What a tenant may use and what it uses, for the tenant (``GET /v1/quotas``) and for
platform admins (``GET /admin/v1/tenants/{id}/quotas``) alike."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

import asyncpg

from cache.ratelimit import QuotaState
from meridian.crud import quota
from meridian.settings import PlanLimits
from meridian.web.ratelimit import QUOTA_LIMITS


def requests(
    limits: PlanLimits, states: Iterable[QuotaState], *, caller: bool
) -> list[dict[str, object]]:
    """The request quotas with what ``states`` say is used of them (null when the
    deployment does not count them: rate limits off). ``caller``: whether the
    caller's own quota is one of them (a tenant's request; not an admin's view)."""
    counted = {s.quota.name: s for s in states}
    shown = [(short, name) for short, name in QUOTA_LIMITS.items() if caller or short != "caller"]
    return [
        {
            "name": name,
            "limit": getattr(limits, name),
            "used": state.quota.limit - state.remaining if state else None,
            "resets_in": round(state.reset, 3) if state else None,
        }
        for short, name in shown
        for state in (counted.get(short),)
    ]


async def stored(
    conn: asyncpg.Connection, tenant_id: UUID, limits: PlanLimits
) -> list[dict[str, object]]:
    """The records per object and the stored bytes, counted now on the tenant's shard
    (in one read-only transaction: one snapshot)."""
    records = await quota.records(conn, tenant_id)
    data: list[dict[str, object]] = [
        {
            "name": f"records_per_object.{kind}",
            "limit": limits.records_per_object,
            "used": count,
            "resets_in": None,
        }
        for kind, count in records.items()
    ]
    used = await quota.stored_bytes(conn, tenant_id)
    data.append(
        {"name": "stored_bytes", "limit": limits.stored_bytes, "used": used, "resets_in": None}
    )
    return data
