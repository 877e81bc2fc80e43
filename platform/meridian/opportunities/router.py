"""Opportunity endpoints: HTTP only, the flows live in meridian.crud.endpoints."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from sqlalchemy import ColumnElement
from starlette.responses import Response

from meridian.crud import batch, custom, endpoints
from meridian.crud.http import (
    CursorQuery,
    IdempotencyKeyHeader,
    IfMatchHeader,
    IfNoneMatchHeader,
    LimitQuery,
    filter_query,
    sort_query,
)
from meridian.crud.schemas import IsoDate, Page
from meridian.deps import (
    CanCreateOpportunities,
    CanDeleteOpportunities,
    CanReadOpportunities,
    CanUpdateOpportunities,
    CanWriteOpportunities,
    Keyring,
)
from meridian.errors import Conflict, Duplicate
from meridian.opportunities import service
from meridian.opportunities.models import Opportunity
from meridian.opportunities.repository import FILTERABLE, SORTABLE, OpportunityRepository
from meridian.opportunities.schemas import (
    OpportunityCreate,
    OpportunityRead,
    OpportunityUpdate,
)
from meridian.opportunities.service import opportunity as opportunity_service
from meridian.web.openapi import problems

router = APIRouter(prefix="/v1/opportunities", tags=["opportunities"])
KIND = "opportunity"
# Its representation, for the tenant's JSON Schema of it (custom fields).
custom.register_read_model(KIND, OpportunityRead)


# 409: no stage given and none to default to (the tenant has no default pipeline, or
# the pipeline has no stage); an external_id another opportunity has (duplicate).
@router.post(
    "",
    status_code=201,
    response_model=OpportunityRead,
    openapi_extra=problems(Conflict, Duplicate),
)
async def create_opportunity(
    body: OpportunityCreate,
    request: Request,
    access: CanCreateOpportunities,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await endpoints.create(
        access,
        request,
        idempotency_key,
        body,
        lambda session: opportunity_service.create(session, access.tenant, body),
        kind=KIND,
    )


@router.post(
    batch.PATH,
    response_model=batch.BatchResults[OpportunityRead],
    description=batch.describe(KIND, OpportunityCreate, OpportunityUpdate),
)
async def batch_write_opportunities(
    body: batch.BatchRequest,
    request: Request,
    access: CanWriteOpportunities,
    keyring: Keyring,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await batch.run(
        access,
        request,
        idempotency_key,
        body,
        service.writes(access.tenant, keyring),
    )


batch.refuse_other_methods(router)


@router.get("", response_model=Page[OpportunityRead])
async def list_opportunities(
    access: CanReadOpportunities,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    sort: Annotated[str | None, sort_query(SORTABLE, "created_at", custom=True)] = None,
    account_id: UUID | None = None,
    pipeline_id: UUID | None = None,
    stage_id: UUID | None = None,
    owner_id: UUID | None = None,
    external_id: Annotated[
        str | None, Query(max_length=255, description="Exact external id (the client's own).")
    ] = None,
    close_after: Annotated[
        IsoDate | None, Query(description="Expected close on or after this date.")
    ] = None,
    close_before: Annotated[
        IsoDate | None, Query(description="Expected close on or before this date.")
    ] = None,
    filter_: Annotated[str | None, filter_query(FILTERABLE)] = None,
) -> Response:
    found = await endpoints.list_filter(access, OpportunityRepository, filter_, FILTERABLE)
    # close_after later than close_before is an empty range, hence an empty page.
    equal = {
        "account_id": account_id,
        "pipeline_id": pipeline_id,
        "stage_id": stage_id,
        "owner_id": owner_id,
        "external_id": external_id,
    }
    where: list[ColumnElement[bool]] = [
        getattr(Opportunity, k) == v for k, v in equal.items() if v is not None
    ]
    if close_after is not None:
        where.append(Opportunity.expected_close_date >= close_after)
    if close_before is not None:
        where.append(Opportunity.expected_close_date <= close_before)
    return await endpoints.listing(
        access,
        OpportunityRepository,
        where=where,
        filters={**equal, "close_after": close_after, "close_before": close_before},
        asked=found,
        sort=await endpoints.sorting(access, OpportunityRepository, sort, SORTABLE, "created_at"),
        limit=limit,
        cursor=cursor,
    )


@router.get("/{opportunity_id}", response_model=OpportunityRead)
async def get_opportunity(
    opportunity_id: UUID, access: CanReadOpportunities, if_none_match: IfNoneMatchHeader = None
) -> Response:
    return await endpoints.fetch(access, OpportunityRepository, KIND, opportunity_id, if_none_match)


# 409 duplicate: an external_id another record has.
@router.patch(
    "/{opportunity_id}",
    response_model=OpportunityRead,
    openapi_extra=problems(Conflict, Duplicate),
)
async def update_opportunity(
    opportunity_id: UUID,
    body: OpportunityUpdate,
    access: CanUpdateOpportunities,
    if_match: IfMatchHeader = None,
) -> Response:
    return await endpoints.change(
        access,
        KIND,
        opportunity_id,
        if_match,
        lambda session, version: opportunity_service.update(
            session, access.tenant, opportunity_id, body, version
        ),
    )


@router.delete("/{opportunity_id}", status_code=204, openapi_extra=problems(Conflict))
async def delete_opportunity(
    opportunity_id: UUID, access: CanDeleteOpportunities, if_match: IfMatchHeader = None
) -> Response:
    return await endpoints.remove(access, OpportunityRepository, KIND, opportunity_id, if_match)
