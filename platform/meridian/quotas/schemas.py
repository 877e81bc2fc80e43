"""What ``GET /v1/quotas`` and ``GET /admin/v1/tenants/{id}/quotas`` answer."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field


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
