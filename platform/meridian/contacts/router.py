"""Contact endpoints: HTTP only, the flows live in meridian.crud.endpoints."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from meridian.contacts.models import Contact
from meridian.contacts.repository import FILTERABLE, SORTABLE, ContactRepository
from meridian.contacts.schemas import ContactCreate, ContactRead, ContactUpdate
from meridian.contacts.service import contact as contact_service
from meridian.crud import endpoints
from meridian.crud.filters import parse_filter
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
    CanCreateContacts,
    CanDeleteContacts,
    CanReadContacts,
    CanUpdateContacts,
    Keyring,
)
from meridian.errors import Duplicate
from meridian.web.openapi import problems

router = APIRouter(prefix="/v1/contacts", tags=["contacts"])
KIND = "contact"


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


@router.get("", response_model=Page[ContactRead])
async def list_contacts(
    access: CanReadContacts,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    sort: Annotated[str | None, sort_query(SORTABLE, "created_at")] = None,
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
    filter_: Annotated[str | None, filter_query(FILTERABLE)] = None,
) -> Response:
    found = parse_filter(filter_, FILTERABLE).with_searched(
        {"email": email, "phone": phone, "tax_id": tax_id}
    )
    filters: dict[str, object] = {
        "account_id": account_id,
        "last_name": last_name,
        "owner_id": owner_id,
    }
    where = [getattr(Contact, k) == v for k, v in filters.items() if v is not None]
    return await endpoints.listing(
        access,
        ContactRepository,
        where=[*where, *found.where],
        filters={**filters, **found.filters},
        searched=found.searched,
        sort=parse_sort(sort, SORTABLE, "created_at"),
        limit=limit,
        cursor=cursor,
    )


@router.get("/{contact_id}", response_model=ContactRead)
async def get_contact(
    contact_id: UUID, access: CanReadContacts, if_none_match: IfNoneMatchHeader = None
) -> Response:
    return await endpoints.fetch(access, ContactRepository, KIND, contact_id, if_none_match)


@router.patch("/{contact_id}", response_model=ContactRead)
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


@router.delete("/{contact_id}", status_code=204)
async def delete_contact(
    contact_id: UUID, access: CanDeleteContacts, if_match: IfMatchHeader = None
) -> Response:
    return await endpoints.remove(access, ContactRepository, KIND, contact_id, if_match)
