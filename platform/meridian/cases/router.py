"""Case endpoints (``/v1/cases``): HTTP only, the flows live in meridian.crud.endpoints.
A case's timeline (its activities) and history are served with the other records'."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from sqlalchemy import ColumnElement, and_, func
from starlette.responses import Response

from meridian.cases import service
from meridian.cases.models import CLOSED_STATUSES, Case
from meridian.cases.repository import FILTERABLE, SORTABLE, CaseRepository
from meridian.cases.schemas import (
    CaseCreate,
    CaseOrigin,
    CasePriority,
    CaseRead,
    CaseStatus,
    CaseUpdate,
)
from meridian.cases.service import case as case_service
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
from meridian.crud.schemas import IsoDateTime, Page
from meridian.deps import (
    CanCreateCases,
    CanDeleteCases,
    CanReadCases,
    CanUpdateCases,
    CanWriteCases,
    Keyring,
)
from meridian.errors import Conflict, Duplicate
from meridian.web.openapi import problems

router = APIRouter(prefix="/v1/cases", tags=["cases"])
KIND = "case"
# Its representation, for the tenant's JSON Schema of it (custom fields).
custom.register_read_model(KIND, CaseRead)


# 409 duplicate: an external_id another record has.
@router.post("", status_code=201, response_model=CaseRead, openapi_extra=problems(Duplicate))
async def create_case(
    body: CaseCreate,
    request: Request,
    access: CanCreateCases,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await endpoints.create(
        access,
        request,
        idempotency_key,
        body,
        lambda session: case_service.create(session, access.tenant, body),
        kind=KIND,
    )


@router.post(
    batch.PATH,
    response_model=batch.BatchResults[CaseRead],
    description=batch.describe(KIND, CaseCreate, CaseUpdate),
)
async def batch_write_cases(
    body: batch.BatchRequest,
    request: Request,
    access: CanWriteCases,
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


@router.get("", response_model=Page[CaseRead])
async def list_cases(
    access: CanReadCases,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    sort: Annotated[str | None, sort_query(SORTABLE, "created_at", custom=True)] = None,
    status: CaseStatus | None = None,
    priority: CasePriority | None = None,
    origin: CaseOrigin | None = None,
    contact_id: UUID | None = None,
    account_id: UUID | None = None,
    owner_id: UUID | None = None,
    external_id: Annotated[
        str | None, Query(max_length=255, description="Exact external id (the client's own).")
    ] = None,
    overdue: Annotated[
        bool | None,
        Query(
            description="true: open cases past their due time; false: the others "
            "(resolved or closed, or not yet due)."
        ),
    ] = None,
    due_before: Annotated[
        IsoDateTime | None, Query(description="Exclusive upper bound (with a time zone).")
    ] = None,
    filter_: Annotated[str | None, filter_query(FILTERABLE)] = None,
) -> Response:
    """Sort: ``due_at``, ``priority``, ``created_at``, ``updated_at``."""
    filters: dict[str, object] = {
        "status": status,
        "priority": priority,
        "origin": origin,
        "contact_id": contact_id,
        "account_id": account_id,
        "owner_id": owner_id,
        "external_id": external_id,
    }
    where: list[ColumnElement[bool]] = [
        getattr(Case, k) == v for k, v in filters.items() if v is not None
    ]
    if overdue is not None:
        late = and_(Case.status.not_in(CLOSED_STATUSES), Case.due_at < func.now())
        where.append(late if overdue else ~late)
    if due_before is not None:
        where.append(Case.due_at < due_before)
    found = await endpoints.list_filter(access, CaseRepository, filter_, FILTERABLE)
    return await endpoints.listing(
        access,
        CaseRepository,
        where=where,
        # "overdue" depends on the time: its pages are named by it, and the list
        # cache's short life bounds how late a page can be.
        filters={**filters, "overdue": overdue, "due_before": due_before},
        asked=found,
        sort=await endpoints.sorting(access, CaseRepository, sort, SORTABLE, "created_at"),
        limit=limit,
        cursor=cursor,
    )


@router.get("/{case_id}", response_model=CaseRead)
async def get_case(
    case_id: UUID, access: CanReadCases, if_none_match: IfNoneMatchHeader = None
) -> Response:
    return await endpoints.fetch(access, CaseRepository, KIND, case_id, if_none_match)


# 409 duplicate: an external_id another record has.
@router.patch("/{case_id}", response_model=CaseRead, openapi_extra=problems(Conflict, Duplicate))
async def update_case(
    case_id: UUID,
    body: CaseUpdate,
    access: CanUpdateCases,
    if_match: IfMatchHeader = None,
) -> Response:
    """Resolving or closing a case needs a ``resolution`` (sent now or already stored);
    ``resolved_at`` and ``closed_at`` are stamped then, and cleared when it reopens."""
    return await endpoints.change(
        access,
        KIND,
        case_id,
        if_match,
        lambda session, version: case_service.update(
            session, access.tenant, case_id, body, version
        ),
    )


@router.delete("/{case_id}", status_code=204, openapi_extra=problems(Conflict))
async def delete_case(
    case_id: UUID, access: CanDeleteCases, if_match: IfMatchHeader = None
) -> Response:
    return await endpoints.remove(access, CaseRepository, KIND, case_id, if_match)
