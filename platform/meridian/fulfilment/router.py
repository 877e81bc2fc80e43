"""Fulfilment endpoints: the tenant's steps, and an opportunity's sagas."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter
from starlette.responses import Response

from meridian.crud import endpoints
from meridian.crud.http import (
    IfMatchHeader,
    IfNoneMatchHeader,
    conditional_response,
    expected_version,
    tagged_response,
    version_etag,
)
from meridian.deps import (
    CanReadFulfilment,
    CanUpdateFulfilment,
    JobQueue,
    PlatformSettings,
    TenantAccess,
)
from meridian.errors import Conflict, Forbidden
from meridian.fulfilment import service
from meridian.fulfilment.jobs import enqueue_advance
from meridian.fulfilment.repository import SagaRepository, StepsRepository
from meridian.fulfilment.schemas import SagaList, SagaRead, StepsRead, StepsUpdate
from meridian.opportunities.repository import OpportunityRepository
from meridian.web.openapi import problems
from meridian.web.responses import json_response

router = APIRouter(tags=["fulfilment"])
KIND = "fulfilment"


def _steps_body(row: dict[str, object] | None) -> dict[str, object]:
    if row is None:
        return {"steps": [], "version": 0, "updated_at": None}
    return {"steps": row["steps"], "version": row["version"], "updated_at": row["updated_at"]}


@router.get("/v1/fulfilment/steps", response_model=StepsRead)
async def get_fulfilment_steps(
    access: CanReadFulfilment, if_none_match: IfNoneMatchHeader = None
) -> Response:
    """The steps a won opportunity's saga runs, in order (version 0: never set)."""
    tenant_id = access.tenant.tenant_id
    row = await endpoints.read(access, lambda conn: StepsRepository.fetch(conn, tenant_id))
    return conditional_response(_steps_body(row), if_none_match)


@router.put("/v1/fulfilment/steps", response_model=StepsRead)
async def put_fulfilment_steps(
    body: StepsUpdate,
    access: CanUpdateFulfilment,
    settings: PlatformSettings,
    if_match: IfMatchHeader = None,
) -> Response:
    """Replace the steps. Sagas already started keep the steps they started with."""
    steps = service.validate_steps(body, allow_private=settings.webhook_allow_private_targets)
    version = expected_version(if_match)
    async with endpoints.writing(access, "fulfilment steps") as session:
        row = await StepsRepository(session, access.tenant).replace(steps, expected_version=version)
    return tagged_response(_steps_body(row), version_etag(row["version"]))


async def _visible_opportunity(access: TenantAccess, opportunity_id: UUID) -> None:
    """404 unless the caller could read the opportunity (its record scope included)."""
    if not access.can("opportunities", "read"):
        raise Forbidden(
            "Reading an opportunity's fulfilment needs opportunities:read.",
            object="opportunities",
            action="read",
        )
    if await endpoints.by_id(access, OpportunityRepository, opportunity_id) is None:
        raise endpoints.not_found("opportunity", opportunity_id)


@router.get("/v1/opportunities/{opportunity_id}/fulfilment", response_model=SagaList)
async def get_opportunity_fulfilment(opportunity_id: UUID, access: CanReadFulfilment) -> Response:
    """The opportunity's sagas (one per time it was won), oldest first."""
    await _visible_opportunity(access, opportunity_id)
    tenant_id = access.tenant.tenant_id
    sagas = await endpoints.read(
        access, lambda conn: SagaRepository.of_opportunity(conn, tenant_id, opportunity_id)
    )
    return json_response({"opportunity_id": opportunity_id, "data": [s.public() for s in sagas]})


@router.post(
    "/v1/opportunities/{opportunity_id}/fulfilment/retry",
    status_code=202,
    response_model=SagaRead,
    openapi_extra=problems(Conflict),
)
async def retry_opportunity_fulfilment(
    opportunity_id: UUID,
    access: CanUpdateFulfilment,
    queue: JobQueue,
    settings: PlatformSettings,
) -> Response:
    """Resume the compensation of the opportunity's latest failed saga (409 if none):
    the compensation that failed is called again, with fresh attempts."""
    await _visible_opportunity(access, opportunity_id)
    async with endpoints.writing(access, KIND) as session:
        repo = SagaRepository(session, access.tenant)
        saga_id = await repo.latest_failed(opportunity_id)
        saga = await repo.load(saga_id, lock=True) if saga_id is not None else None
        if saga is None:
            raise Conflict("The opportunity has no failed saga to retry.")
        phase, position = service.retry(saga)
        await repo.save(saga, [saga.steps[position]])
        repo.emit(saga, "retried", {"step": saga.steps[position].name})
    # After the commit: the job reads the saga as committed. If saq still holds the job
    # that just failed, the recovery job queues it again shortly.
    await enqueue_advance(queue, settings, access.tenant.tenant_id, saga, phase, position)
    return json_response(saga.public(), 202)
