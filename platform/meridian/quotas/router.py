"""``GET /v1/quotas``: what the tenant's plan (or its own limits) allows it, and how much
of each it uses: requests per minute (the tenant's, the caller's), calls per day,
records per object and bytes of stored files."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from meridian.crud import endpoints
from meridian.deps import CanReadQuotas
from meridian.quotas import service
from meridian.quotas.schemas import Quotas
from meridian.web import ratelimit
from meridian.web.responses import json_response

router = APIRouter(prefix="/v1/quotas", tags=["quotas"])


@router.get("", response_model=Quotas)
async def get_quotas(request: Request, access: CanReadQuotas) -> Response:
    """The tenant's limits and what it uses of them. Records are counted exactly; request
    quotas are as this API instance sees them (shared with the others a few times a
    second)."""
    verdict = ratelimit.verdict_of(request.scope.get("state") or {})
    states = verdict.states if verdict is not None else ()
    tenant_id, limits = access.tenant.tenant_id, access.limits
    counted = await endpoints.read(access, lambda conn: service.stored(conn, tenant_id, limits))
    data = [*service.requests(limits, states, caller=True), *counted]
    return json_response({"plan": access.tenant.plan, "data": data})
