"""``GET /v1/quotas``: what the tenant's plan (or its own limits) allows it, and how much
of each it uses: requests per minute (the tenant's, the caller's), calls per day,
records per object and bytes of stored files."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from meridian.crud import endpoints, quota
from meridian.deps import CanReadQuotas
from meridian.web import ratelimit
from meridian.web.responses import json_response

router = APIRouter(prefix="/v1/quotas", tags=["quotas"])


class QuotaUse(BaseModel):
    name: Annotated[
        str,
        Field(
            description="`tenant_per_minute`, `caller_per_minute`, `calls_per_day`, "
            "`records_per_object.<object>` or `stored_bytes`."
        ),
    ]
    limit: int
    used: int | None = Field(
        description="Used now (this request included); null when the deployment does not "
        "count it (rate limits off)."
    )
    resets_in: float | None = Field(
        description="Request quotas: seconds until the whole quota is available again."
    )


class Quotas(BaseModel):
    plan: str
    data: list[QuotaUse]


@router.get("", response_model=Quotas)
async def get_quotas(request: Request, access: CanReadQuotas) -> Response:
    """The tenant's limits and what it uses of them. Records are counted exactly; request
    quotas are as this API instance sees them (shared with the others a few times a
    second)."""
    limits = access.limits
    verdict = ratelimit.verdict_of(request.scope.get("state") or {})
    counted = {s.quota.name: s for s in verdict.states} if verdict is not None else {}
    data: list[dict[str, object]] = []
    for short, name in ratelimit.QUOTA_LIMITS.items():
        state = counted.get(short)
        data.append(
            {
                "name": name,
                "limit": getattr(limits, name),
                "used": state.quota.limit - state.remaining if state else None,
                "resets_in": round(state.reset, 3) if state else None,
            }
        )
    tenant_id = access.tenant.tenant_id

    async def usage(conn: asyncpg.Connection) -> tuple[dict[str, int], int]:
        return await quota.records(conn, tenant_id), await quota.stored_bytes(conn, tenant_id)

    records, stored = await endpoints.read(access, usage)
    for kind, count in records.items():
        data.append(
            {
                "name": f"records_per_object.{kind}",
                "limit": limits.records_per_object,
                "used": count,
                "resets_in": None,
            }
        )
    data.append(
        {"name": "stored_bytes", "limit": limits.stored_bytes, "used": stored, "resets_in": None}
    )
    return json_response({"plan": access.tenant.plan, "data": data})
