"""Lead endpoints (``/v1/leads``), their conversion, and the tenant's lead scoring rules
(``/v1/lead-scoring/rules``): HTTP only, the flows live in meridian.crud.endpoints."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
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
from meridian.crud.pagination import parse_sort
from meridian.crud.schemas import Page
from meridian.deps import (
    CanCreateLeads,
    CanCreateScoring,
    CanDeleteLeads,
    CanDeleteScoring,
    CanReadLeads,
    CanReadScoring,
    CanUpdateLeads,
    CanUpdateScoring,
    CanWriteLeads,
    Keyring,
    TenantAccess,
    record_viewer,
)
from meridian.errors import Conflict, Duplicate, Forbidden, QuotaExceeded
from meridian.leads import service
from meridian.leads.models import Lead, LeadSource
from meridian.leads.repository import (
    FILTERABLE,
    RULES_SORTABLE,
    SORTABLE,
    LeadRepository,
    ScoringRuleRepository,
)
from meridian.leads.schemas import (
    AnyLeadStatus,
    LeadConversion,
    LeadConvert,
    LeadCreate,
    LeadRead,
    LeadUpdate,
    ScoringRuleCreate,
    ScoringRuleRead,
    ScoringRuleUpdate,
)
from meridian.leads.service import ConvertedLead
from meridian.leads.service import lead as lead_service
from meridian.leads.service import scoring_rule as rule_service
from meridian.web.openapi import problems
from meridian.web.responses import json_response

router = APIRouter(prefix="/v1/leads", tags=["leads"])
rules_router = APIRouter(prefix="/v1/lead-scoring/rules", tags=["leads"])
KIND = "lead"
# Its representation, for the tenant's JSON Schema of it (custom fields).
custom.register_read_model(KIND, LeadRead)
RULE = "lead_scoring_rule"


# 409 duplicate: an external_id another record has.
@router.post("", status_code=201, response_model=LeadRead, openapi_extra=problems(Duplicate))
async def create_lead(
    body: LeadCreate,
    request: Request,
    access: CanCreateLeads,
    keyring: Keyring,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """The new lead is scored by the tenant's rules at once (``score``, ``score_details``)."""
    return await endpoints.create(
        access,
        request,
        idempotency_key,
        body,
        lambda session: lead_service.create(session, access.tenant, body, keyring),
        kind=KIND,
    )


@router.post(
    batch.PATH,
    response_model=batch.BatchResults[LeadRead],
    description=batch.describe(KIND, LeadCreate, LeadUpdate),
)
async def batch_write_leads(
    body: batch.BatchRequest,
    request: Request,
    access: CanWriteLeads,
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


@router.get("", response_model=Page[LeadRead])
async def list_leads(
    access: CanReadLeads,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    sort: Annotated[str | None, sort_query(SORTABLE, "created_at", custom=True)] = None,
    status: AnyLeadStatus | None = None,
    source: LeadSource | None = None,
    owner_id: UUID | None = None,
    external_id: Annotated[
        str | None, Query(max_length=255, description="Exact external id (the client's own).")
    ] = None,
    company: Annotated[str | None, Query(max_length=255)] = None,
    last_name: Annotated[str | None, Query(max_length=100)] = None,
    email: Annotated[
        str | None, Query(max_length=320, description="Exact address, case-insensitive.")
    ] = None,
    phone: Annotated[
        str | None, Query(max_length=40, description="Exact number; punctuation ignored.")
    ] = None,
    filter_: Annotated[str | None, filter_query(FILTERABLE)] = None,
) -> Response:
    """Sort: ``score`` (``-score``: the hottest first), ``last_name``, ``company``,
    ``created_at``, ``updated_at``."""
    filters: dict[str, object] = {
        "status": status,
        "source": source,
        "owner_id": owner_id,
        "external_id": external_id,
        "company": company,
        "last_name": last_name,
    }
    found = await endpoints.list_filter(
        access, LeadRepository, filter_, FILTERABLE, searched={"email": email, "phone": phone}
    )
    where = [getattr(Lead, k) == v for k, v in filters.items() if v is not None]
    return await endpoints.listing(
        access,
        LeadRepository,
        where=where,
        filters=filters,
        asked=found,
        sort=await endpoints.sorting(access, LeadRepository, sort, SORTABLE, "created_at"),
        limit=limit,
        cursor=cursor,
    )


@router.get("/{lead_id}", response_model=LeadRead)
async def get_lead(
    lead_id: UUID, access: CanReadLeads, if_none_match: IfNoneMatchHeader = None
) -> Response:
    return await endpoints.fetch(access, LeadRepository, KIND, lead_id, if_none_match)


@router.patch(
    "/{lead_id}",
    response_model=LeadRead,
    openapi_extra=problems(ConvertedLead, Conflict, Duplicate),
)
async def update_lead(
    lead_id: UUID,
    body: LeadUpdate,
    access: CanUpdateLeads,
    keyring: Keyring,
    if_match: IfMatchHeader = None,
) -> Response:
    """A converted lead is read-only (409)."""
    return await endpoints.change(
        access,
        KIND,
        lead_id,
        if_match,
        lambda session, version: lead_service.update(
            session, access.tenant, lead_id, body, version, keyring
        ),
    )


@router.delete("/{lead_id}", status_code=204, openapi_extra=problems(Conflict))
async def delete_lead(
    lead_id: UUID, access: CanDeleteLeads, if_match: IfMatchHeader = None
) -> Response:
    return await endpoints.remove(access, LeadRepository, KIND, lead_id, if_match)


def _require_conversion_rights(access: TenantAccess, body: LeadConvert) -> None:
    # Converting creates records of other kinds: the role must be allowed to create
    # each one the conversion would.
    needed = []
    if body.account_id is None:
        needed.append("accounts")
    if body.contact_id is None:
        needed.append("contacts")
    if body.opportunity is not None:
        needed.append("opportunities")
    for obj in needed:
        if not access.can(obj, "create"):
            raise Forbidden(
                f"Converting this lead creates {obj}, which the role '{access.actor.role}' "
                "may not create.",
                object=obj,
                action="create",
            )


@router.post(
    "/{lead_id}/convert",
    response_model=LeadConversion,
    openapi_extra=problems(Duplicate, Forbidden, QuotaExceeded),
)
async def convert_lead(
    lead_id: UUID,
    body: LeadConvert,
    access: CanUpdateLeads,
    keyring: Keyring,
) -> Response:
    """In one transaction: the account (linked, or created from the lead's company), the
    contact (linked, or created from the lead: 409 when its email is already on a
    contact, whose id the problem names, to link instead), the opportunity when asked
    for, and the lead marked ``converted`` with what it became. Idempotent: converting a
    converted lead again creates nothing and answers its conversion
    (``converted_now: false``)."""
    _require_conversion_rights(access, body)
    viewer = record_viewer(access)
    result: dict[str, Any] | None = await endpoints.transact(
        access,
        KIND,
        lambda session: lead_service.convert(
            session, access.tenant, lead_id, body, keyring, viewer=viewer
        ),
    )
    if result is None:
        raise endpoints.not_found(KIND, lead_id)
    lead = await endpoints.opened(access, KIND, result["lead"])
    result["lead"] = endpoints.shown(access, KIND, lead)
    return json_response(result)


# -- scoring rules ---------------------------------------------------------------------------
@rules_router.post(
    "", status_code=201, response_model=ScoringRuleRead, openapi_extra=problems(Conflict)
)
async def create_scoring_rule(
    body: ScoringRuleCreate,
    request: Request,
    access: CanCreateScoring,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Every lead of the tenant is scored again in the background (a few seconds for
    tens of thousands of leads); a lead's ``score_details`` names the rules it met.
    Rule names are unique in the tenant (409)."""
    return await endpoints.create(
        access,
        request,
        idempotency_key,
        body,
        lambda session: rule_service.create(session, access.tenant, body),
        kind=RULE,
    )


@rules_router.get("", response_model=Page[ScoringRuleRead])
async def list_scoring_rules(
    access: CanReadScoring,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    sort: Annotated[str | None, sort_query(RULES_SORTABLE, "created_at")] = None,
) -> Response:
    return await endpoints.listing(
        access,
        ScoringRuleRepository,
        where=[],
        filters={},
        sort=parse_sort(sort, RULES_SORTABLE, "created_at"),
        limit=limit,
        cursor=cursor,
    )


@rules_router.get("/{rule_id}", response_model=ScoringRuleRead)
async def get_scoring_rule(
    rule_id: UUID, access: CanReadScoring, if_none_match: IfNoneMatchHeader = None
) -> Response:
    return await endpoints.fetch(access, ScoringRuleRepository, RULE, rule_id, if_none_match)


@rules_router.patch("/{rule_id}", response_model=ScoringRuleRead, openapi_extra=problems(Conflict))
async def update_scoring_rule(
    rule_id: UUID,
    body: ScoringRuleUpdate,
    access: CanUpdateScoring,
    if_match: IfMatchHeader = None,
) -> Response:
    """The tenant's leads are scored again in the background."""
    return await endpoints.change(
        access,
        RULE,
        rule_id,
        if_match,
        lambda session, version: rule_service.update(
            session, access.tenant, rule_id, body, version
        ),
    )


@rules_router.delete("/{rule_id}", status_code=204)
async def delete_scoring_rule(
    rule_id: UUID, access: CanDeleteScoring, if_match: IfMatchHeader = None
) -> Response:
    """The tenant's leads are scored again in the background."""
    return await endpoints.remove(access, ScoringRuleRepository, RULE, rule_id, if_match)
