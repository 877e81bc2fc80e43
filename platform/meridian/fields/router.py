"""Custom fields (``/v1/objects/{object}/fields``) and each object's JSON Schema as the
tenant has shaped it (``/v1/objects/{object}/schema``): HTTP only, the flows live in
meridian.crud.endpoints."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from meridian.crud import custom, endpoints
from meridian.crud.custom import OBJECTS, FieldDefinition
from meridian.crud.http import (
    CursorQuery,
    IdempotencyKeyHeader,
    IfMatchHeader,
    IfNoneMatchHeader,
    LimitQuery,
    etag,
    expected_version,
    tagged_response,
)
from meridian.crud.pagination import parse_sort
from meridian.crud.schemas import Page
from meridian.deps import (
    CanCreateFields,
    CanDeleteFields,
    CanReadFields,
    CanUpdateFields,
    TenantAccess,
)
from meridian.errors import Conflict
from meridian.fields.repository import SORTABLE, FieldRepository
from meridian.fields.schemas import FieldCreate, FieldRead, FieldUpdate, ObjectName, ObjectSchema
from meridian.fields.service import field as field_service
from meridian.web.openapi import problems
from meridian.web.responses import json_response

router = APIRouter(prefix="/v1/objects/{object}", tags=["custom fields"])
KIND = "field_definition"


@router.post("/fields", status_code=201, response_model=FieldRead, openapi_extra=problems(Conflict))
async def create_field(
    object: ObjectName,
    body: FieldCreate,
    request: Request,
    access: CanCreateFields,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """A new field of the object; names are unique per object, for good (409)."""
    return await endpoints.create(
        access,
        request,
        idempotency_key,
        body,
        lambda session: field_service.create(session, access.tenant, OBJECTS[object], body),
        kind=KIND,
    )


@router.get("/fields", response_model=Page[FieldRead])
async def list_fields(
    object: ObjectName,
    access: CanReadFields,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    archived: Annotated[
        bool | None, Query(description="true: archived fields only; false: active only.")
    ] = None,
) -> Response:
    where = [FieldDefinition.object == OBJECTS[object]]
    if archived is not None:
        where.append(
            FieldDefinition.archived_at.is_not(None)
            if archived
            else FieldDefinition.archived_at.is_(None)
        )
    return await endpoints.listing(
        access,
        FieldRepository,
        where=where,
        filters={"object": object, "archived": archived},
        sort=parse_sort(None, SORTABLE, "created_at"),
        limit=limit,
        cursor=cursor,
    )


async def _field_of(access: TenantAccess, object: str, field_id: UUID) -> None:
    """404 for a field of another object (the id alone would find it)."""
    row = await endpoints.by_id(access, FieldRepository, field_id)
    if row is None or row["object"] != OBJECTS[object]:
        raise endpoints.not_found("field", field_id)


@router.get("/fields/{field_id}", response_model=FieldRead)
async def get_field(
    object: ObjectName,
    field_id: UUID,
    access: CanReadFields,
    if_none_match: IfNoneMatchHeader = None,
) -> Response:
    await _field_of(access, object, field_id)
    return await endpoints.fetch(access, FieldRepository, KIND, field_id, if_none_match)


@router.patch("/fields/{field_id}", response_model=FieldRead, openapi_extra=problems(Conflict))
async def update_field(
    object: ObjectName,
    field_id: UUID,
    body: FieldUpdate,
    access: CanUpdateFields,
    if_match: IfMatchHeader = None,
) -> Response:
    """Label, description, required (for records written from now on), default,
    options (a picklist value records hold cannot be removed: 409) and position."""
    return await endpoints.change(
        access,
        KIND,
        field_id,
        if_match,
        lambda session, version: field_service.update(
            session, access.tenant, OBJECTS[object], field_id, body, version
        ),
    )


@router.delete("/fields/{field_id}", status_code=204, openapi_extra=problems(Conflict))
async def delete_field(
    object: ObjectName,
    field_id: UUID,
    access: CanDeleteFields,
    if_match: IfMatchHeader = None,
    purge: Annotated[
        bool,
        Query(
            description="Delete an archived field and its values for good (without it, "
            "the field is archived: its values leave the records and are kept)."
        ),
    ] = False,
) -> Response:
    kind = OBJECTS[object]
    version = expected_version(if_match)
    done = await endpoints.transact(
        access,
        KIND,
        lambda session: field_service.archive(
            session, access.tenant, kind, field_id, version, purge=purge
        ),
    )
    if not done:
        raise endpoints.not_found("field", field_id)
    await endpoints.invalidate_kind(access.runtime, access.tenant.tenant_id, kind)
    return Response(status_code=204)


@router.post("/fields/{field_id}/restore", response_model=FieldRead)
async def restore_field(object: ObjectName, field_id: UUID, access: CanUpdateFields) -> Response:
    """An archived field back, with the values its records had."""
    kind = OBJECTS[object]
    row = await endpoints.transact(
        access,
        KIND,
        lambda session: field_service.restore(session, access.tenant, kind, field_id),
    )
    if row is None:
        raise endpoints.not_found("field", field_id)
    await endpoints.invalidate_kind(access.runtime, access.tenant.tenant_id, kind)
    return tagged_response(row, etag(row))


@router.get("/schema", response_model=ObjectSchema)
async def get_object_schema(object: ObjectName, access: CanReadFields) -> Response:
    """The object's JSON Schema (2020-12) as this tenant has it: the built-in fields and,
    under ``custom``, the tenant's own with their types, choices and required ones."""
    kind, tenant_id = OBJECTS[object], access.tenant.tenant_id

    async def work(conn: Any) -> tuple[list[custom.Field], dict[str, str]]:
        fields = await custom.fields_read(conn, tenant_id, kind)
        labels = await custom.labels_read(conn, tenant_id, kind)
        return fields, labels

    fields, labels = await endpoints.read(access, work)
    return json_response(custom.object_schema(kind, fields, labels))
