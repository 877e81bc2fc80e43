from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from meridian.accounts import service
from meridian.accounts.models import Account
from meridian.accounts.repository import FILTERABLE, SORTABLE, AccountRepository
from meridian.accounts.schemas import AccountCreate, AccountRead, AccountUpdate
from meridian.accounts.service import account as account_service
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
    CanCreateAccounts,
    CanDeleteAccounts,
    CanReadAccounts,
    CanUpdateAccounts,
    CanWriteAccounts,
    Keyring,
)
from meridian.errors import Conflict, Duplicate
from meridian.web.openapi import problems

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])
KIND = "account"
# Its representation, for the tenant's JSON Schema of it (custom fields).
custom.register_read_model(KIND, AccountRead)


# 409 duplicate: an external_id another record has.
@router.post("", status_code=201, response_model=AccountRead, openapi_extra=problems(Duplicate))
async def create_account(
    body: AccountCreate,
    request: Request,
    access: CanCreateAccounts,
    keyring: Keyring,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await endpoints.create(
        access,
        request,
        idempotency_key,
        body,
        lambda session: account_service.create(session, access.tenant, body, keyring),
        kind=KIND,
    )


@router.post(
    batch.PATH,
    response_model=batch.BatchResults[AccountRead],
    description=batch.describe(KIND, AccountCreate, AccountUpdate),
)
async def batch_write_accounts(
    body: batch.BatchRequest,
    request: Request,
    access: CanWriteAccounts,
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


@router.get("", response_model=Page[AccountRead])
async def list_accounts(
    access: CanReadAccounts,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    sort: Annotated[str | None, sort_query(SORTABLE, "created_at", custom=True)] = None,
    domain: Annotated[str | None, Query(max_length=255)] = None,
    name: Annotated[str | None, Query(max_length=255)] = None,
    parent_id: UUID | None = None,
    owner_id: UUID | None = None,
    external_id: Annotated[
        str | None, Query(max_length=255, description="Exact external id (the client's own).")
    ] = None,
    tax_id: Annotated[
        str | None, Query(max_length=40, description="Exact tax id; digits compared.")
    ] = None,
    filter_: Annotated[str | None, filter_query(FILTERABLE)] = None,
) -> Response:
    found = await endpoints.list_filter(
        access, AccountRepository, filter_, FILTERABLE, searched={"tax_id": tax_id}
    )
    filters: dict[str, object] = {
        "domain": domain and domain.lower(),
        "name": name,
        "parent_id": parent_id,
        "owner_id": owner_id,
        "external_id": external_id,
    }
    where = [getattr(Account, k) == v for k, v in filters.items() if v is not None]
    return await endpoints.listing(
        access,
        AccountRepository,
        where=where,
        filters=filters,
        asked=found,
        sort=await endpoints.sorting(access, AccountRepository, sort, SORTABLE, "created_at"),
        limit=limit,
        cursor=cursor,
    )


@router.get("/{account_id}", response_model=AccountRead)
async def get_account(
    account_id: UUID, access: CanReadAccounts, if_none_match: IfNoneMatchHeader = None
) -> Response:
    return await endpoints.fetch(access, AccountRepository, KIND, account_id, if_none_match)


# 409: a parent_id that would make the account its own ancestor; an external_id another
# account has (duplicate).
@router.patch(
    "/{account_id}", response_model=AccountRead, openapi_extra=problems(Conflict, Duplicate)
)
async def update_account(
    account_id: UUID,
    body: AccountUpdate,
    access: CanUpdateAccounts,
    keyring: Keyring,
    if_match: IfMatchHeader = None,
) -> Response:
    return await endpoints.change(
        access,
        KIND,
        account_id,
        if_match,
        lambda session, version: account_service.update(
            session, access.tenant, account_id, body, version, keyring
        ),
    )


# Refused while contacts, opportunities or child accounts refer to the account.
@router.delete("/{account_id}", status_code=204, openapi_extra=problems(Conflict))
async def delete_account(
    account_id: UUID, access: CanDeleteAccounts, if_match: IfMatchHeader = None
) -> Response:
    return await endpoints.remove(access, AccountRepository, KIND, account_id, if_match)
