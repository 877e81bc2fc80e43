"""Contact endpoints: HTTP only, the flows live in meridian.crud.endpoints."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from meridian.contacts import service
from meridian.contacts.models import Contact
from meridian.contacts.repository import FILTERABLE, SORTABLE, ContactRepository
from meridian.contacts.schemas import ContactCreate, ContactRead, ContactUpdate
from meridian.contacts.service import contact as contact_service
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
from meridian.crud.schemas import Page
from meridian.deps import (
    CanCreateContacts,
    CanDeleteContacts,
    CanReadContacts,
    CanUpdateContacts,
    CanWriteContacts,
    Keyring,
)
from meridian.errors import Conflict, Duplicate
from meridian.web.openapi import problems

router = APIRouter(prefix="/v1/contacts", tags=["contacts"])
KIND = "contact"
# Its representation, for the tenant's JSON Schema of it (custom fields).
custom.register_read_model(KIND, ContactRead)


@router.post("", status_code=201, response_model=ContactRead, openapi_extra=problems(Duplicate))
async def create_contact(
    body: ContactCreate,
    request: Request,
    access: CanCreateContacts,
    keyring: Keyring,
    idempotency_key: IdempotencyKeyHeader = None,
    allow_duplicate: Annotated[
        bool, Query(description="Create the contact even if its email is already on file.")
    ] = False,
) -> Response:
    return await endpoints.create(
        access,
        request,
        idempotency_key,
        body,
        lambda session: contact_service.create(
            session,
            access.tenant,
            body,
            keyring,
            allow_duplicate=allow_duplicate,
        ),
        kind=KIND,
    )


@router.post(
    batch.PATH,
    response_model=batch.BatchResults[ContactRead],
    description=batch.describe(KIND, ContactCreate, ContactUpdate),
)
async def batch_write_contacts(
    body: batch.BatchRequest,
    request: Request,
    access: CanWriteContacts,
    keyring: Keyring,
    idempotency_key: IdempotencyKeyHeader = None,
    allow_duplicate: Annotated[
        bool,
        Query(description="Create the batch's contacts even if their email is already on file."),
    ] = False,
) -> Response:
    return await batch.run(
        access,
        request,
        idempotency_key,
        body,
        service.writes(access.tenant, keyring, allow_duplicate),
    )


batch.refuse_other_methods(router)


@router.get("", response_model=Page[ContactRead])
async def list_contacts(
    access: CanReadContacts,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    sort: Annotated[str | None, sort_query(SORTABLE, "created_at", custom=True)] = None,
    account_id: UUID | None = None,
    email: Annotated[
        str | None, Query(max_length=320, description="Exact address, case-insensitive.")
    ] = None,
    phone: Annotated[
        str | None, Query(max_length=40, description="Exact number; punctuation ignored.")
    ] = None,
    tax_id: Annotated[
        str | None, Query(max_length=40, description="Exact tax id; digits compared.")
    ] = None,
    last_name: Annotated[str | None, Query(max_length=100)] = None,
    owner_id: UUID | None = None,
    external_id: Annotated[
        str | None, Query(max_length=255, description="Exact external id (the client's own).")
    ] = None,
    filter_: Annotated[str | None, filter_query(FILTERABLE)] = None,
) -> Response:
    searched = {"email": email, "phone": phone, "tax_id": tax_id}
    found = await endpoints.list_filter(
        access, ContactRepository, filter_, FILTERABLE, searched=searched
    )
    filters: dict[str, object] = {
        "account_id": account_id,
        "last_name": last_name,
        "owner_id": owner_id,
        "external_id": external_id,
    }
    where = [getattr(Contact, k) == v for k, v in filters.items() if v is not None]
    return await endpoints.listing(
        access,
        ContactRepository,
        where=where,
        filters=filters,
        asked=found,
        sort=await endpoints.sorting(access, ContactRepository, sort, SORTABLE, "created_at"),
        limit=limit,
        cursor=cursor,
    )


@router.get("/{contact_id}", response_model=ContactRead)
async def get_contact(
    contact_id: UUID, access: CanReadContacts, if_none_match: IfNoneMatchHeader = None
) -> Response:
    return await endpoints.fetch(access, ContactRepository, KIND, contact_id, if_none_match)


# 409 duplicate: an external_id another record has.
@router.patch(
    "/{contact_id}", response_model=ContactRead, openapi_extra=problems(Conflict, Duplicate)
)
async def update_contact(
    contact_id: UUID,
    body: ContactUpdate,
    access: CanUpdateContacts,
    keyring: Keyring,
    if_match: IfMatchHeader = None,
) -> Response:
    return await endpoints.change(
        access,
        KIND,
        contact_id,
        if_match,
        lambda session, version: contact_service.update(
            session, access.tenant, contact_id, body, version, keyring
        ),
    )


@router.delete("/{contact_id}", status_code=204, openapi_extra=problems(Conflict))
async def delete_contact(
    contact_id: UUID, access: CanDeleteContacts, if_match: IfMatchHeader = None
) -> Response:
    return await endpoints.remove(access, ContactRepository, KIND, contact_id, if_match)
