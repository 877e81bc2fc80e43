"""Pipelines and their stages (``/v1/pipelines``).

A pipeline is always represented with its stages ordered by position, in single reads
and in list pages alike (a tenant has few pipelines and a pipeline at most 50 stages, so
one extra indexed query per page is cheap and spares clients a request per pipeline).
The pipeline's ETag covers its stages: every stage change bumps the pipeline's version.
Stages have their own ETag (their version) for stage PATCH/DELETE; POST of a stage takes
the pipeline's ETag in If-Match, since where a stage lands depends on the others.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from meridian.crud import endpoints
from meridian.crud.http import (
    CursorQuery,
    IdempotencyKeyHeader,
    IfMatchHeader,
    IfNoneMatchHeader,
    LimitQuery,
    conditional_response,
    expected_version,
    filter_query,
    sort_query,
)
from meridian.crud.pagination import parse_sort
from meridian.crud.schemas import Page
from meridian.deps import (
    CanCreatePipelines,
    CanDeletePipelines,
    CanReadPipelines,
    CanUpdatePipelines,
)
from meridian.errors import Conflict, NotFound
from meridian.pipelines.models import Pipeline
from meridian.pipelines.repository import (
    FILTERABLE,
    SORTABLE,
    PipelineRepository,
    StageRepository,
)
from meridian.pipelines.schemas import (
    PipelineCreate,
    PipelineRead,
    PipelineUpdate,
    StageAdd,
    StageRead,
    StageUpdate,
)
from meridian.pipelines.service import pipeline as pipeline_service
from meridian.web.openapi import problems
from meridian.web.responses import json_response

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])
KIND = "pipeline"
STAGE_KIND = "pipeline stage"


# 409: a concurrent change of the default pipeline won the one-default index.
@router.post("", status_code=201, response_model=PipelineRead, openapi_extra=problems(Conflict))
async def create_pipeline(
    body: PipelineCreate,
    request: Request,
    access: CanCreatePipelines,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Stages take their positions from the list order. ``is_default: true`` makes this
    the tenant's default pipeline (the previous default is unset in the same change)."""
    return await endpoints.create(
        access,
        request,
        idempotency_key,
        body,
        lambda session: pipeline_service.create(session, access.tenant, body),
    )


@router.get("", response_model=Page[PipelineRead])
async def list_pipelines(
    access: CanReadPipelines,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    sort: Annotated[str | None, sort_query(SORTABLE, "name")] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    is_default: bool | None = None,
    filter_: Annotated[str | None, filter_query(FILTERABLE)] = None,
) -> Response:
    """Each item includes its stages ordered by position. Sort: ``name`` (default),
    ``created_at``."""
    found = await endpoints.list_filter(access, PipelineRepository, filter_, FILTERABLE)
    filters = {"name": name, "is_default": is_default}
    where = [getattr(Pipeline, k) == v for k, v in filters.items() if v is not None]
    return await endpoints.listing(
        access,
        PipelineRepository,
        where=where,
        filters=filters,
        asked=found,
        sort=parse_sort(sort, SORTABLE, "name"),
        limit=limit,
        cursor=cursor,
    )


@router.get("/{pipeline_id}", response_model=PipelineRead)
async def get_pipeline(
    pipeline_id: UUID, access: CanReadPipelines, if_none_match: IfNoneMatchHeader = None
) -> Response:
    return await endpoints.fetch(access, PipelineRepository, KIND, pipeline_id, if_none_match)


@router.patch("/{pipeline_id}", response_model=PipelineRead, openapi_extra=problems(Conflict))
async def update_pipeline(
    pipeline_id: UUID,
    body: PipelineUpdate,
    access: CanUpdatePipelines,
    if_match: IfMatchHeader = None,
) -> Response:
    """``is_default: true`` moves the default here; ``false`` on the default is refused
    (409): a tenant always has exactly one default pipeline."""
    return await endpoints.change(
        access,
        KIND,
        pipeline_id,
        if_match,
        lambda session, version: pipeline_service.update(
            session, access.tenant, pipeline_id, body, version
        ),
    )


@router.delete("/{pipeline_id}", status_code=204, openapi_extra=problems(Conflict))
async def delete_pipeline(
    pipeline_id: UUID, access: CanDeletePipelines, if_match: IfMatchHeader = None
) -> Response:
    """Refused (409) for the default pipeline and while opportunities are in it."""
    version = expected_version(if_match)
    await endpoints.transact(
        access,
        KIND,
        lambda session: pipeline_service.delete(session, access.tenant, pipeline_id, version),
    )
    return Response(status_code=204)


@router.get("/{pipeline_id}/stages", response_model=Page[StageRead])
async def list_pipeline_stages(pipeline_id: UUID, access: CanReadPipelines) -> Response:
    """All stages ordered by position (bounded, so never more than one page)."""
    pipeline = await endpoints.by_id(access, PipelineRepository, pipeline_id)
    if pipeline is None:
        raise endpoints.not_found(KIND, pipeline_id)
    return json_response({"data": pipeline["stages"], "next_cursor": None})


# 409: a full pipeline (50 stages), or a position past its end.
@router.post(
    "/{pipeline_id}/stages",
    status_code=201,
    response_model=StageRead,
    openapi_extra=problems(Conflict),
)
async def create_pipeline_stage(
    pipeline_id: UUID,
    body: StageAdd,
    request: Request,
    access: CanUpdatePipelines,
    idempotency_key: IdempotencyKeyHeader = None,
    if_match: IfMatchHeader = None,
) -> Response:
    """Appends, or inserts at ``position`` shifting the later stages. If-Match, when
    given, is the pipeline's ETag."""
    version = expected_version(if_match)
    return await endpoints.create(
        access,
        request,
        idempotency_key,
        body,
        lambda session: pipeline_service.add_stage(
            session, access.tenant, pipeline_id, body, version
        ),
        subject=KIND,  # If-Match names the pipeline's version
    )


@router.get("/{pipeline_id}/stages/{stage_id}", response_model=StageRead)
async def get_pipeline_stage(
    pipeline_id: UUID,
    stage_id: UUID,
    access: CanReadPipelines,
    if_none_match: IfNoneMatchHeader = None,
) -> Response:
    tenant_id = access.tenant.tenant_id
    row = await endpoints.read(
        access, lambda conn: StageRepository.fetch_in(conn, tenant_id, pipeline_id, stage_id)
    )
    if row is None:
        raise NotFound(f"No stage with id {stage_id} in pipeline {pipeline_id}.")
    return conditional_response(row, if_none_match)


@router.patch(
    "/{pipeline_id}/stages/{stage_id}", response_model=StageRead, openapi_extra=problems(Conflict)
)
async def update_pipeline_stage(
    pipeline_id: UUID,
    stage_id: UUID,
    body: StageUpdate,
    access: CanUpdatePipelines,
    if_match: IfMatchHeader = None,
) -> Response:
    """A new ``position`` moves the stage there and shifts the stages in between.
    If-Match is the stage's ETag."""
    return await endpoints.change(
        access,
        STAGE_KIND,
        stage_id,
        if_match,
        lambda session, version: pipeline_service.update_stage(
            session, access.tenant, pipeline_id, stage_id, body, version
        ),
    )


@router.delete(
    "/{pipeline_id}/stages/{stage_id}", status_code=204, openapi_extra=problems(Conflict)
)
async def delete_pipeline_stage(
    pipeline_id: UUID, stage_id: UUID, access: CanUpdatePipelines, if_match: IfMatchHeader = None
) -> Response:
    """Refused (409) for the last stage and while opportunities are in it. If-Match is
    the stage's ETag."""
    version = expected_version(if_match)
    await endpoints.transact(
        access,
        STAGE_KIND,
        lambda session: pipeline_service.delete_stage(
            session, access.tenant, pipeline_id, stage_id, version
        ),
    )
    return Response(status_code=204)
