"""Contact request and response bodies (e-mail and phone types: ``crud.schemas``)."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from pydantic import ConfigDict, StringConstraints

from meridian.crud.schemas import (
    NOT_BLANK,
    CustomValues,
    Email,
    ExternalId,
    InputModel,
    Omittable,
    Phone,
    RecordRead,
)
from meridian.encryption.schemas import TaxId

FirstName = Annotated[str, StringConstraints(max_length=100)]
LastName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NOT_BLANK)]
Title = Annotated[str, StringConstraints(max_length=200)]


class ContactCreate(InputModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com"}]
        }
    )

    first_name: FirstName | None = None
    last_name: LastName
    email: Email | None = None
    phone: Phone | None = None
    tax_id: TaxId | None = None
    title: Title | None = None
    account_id: UUID | None = None
    owner_id: UUID | None = None
    external_id: ExternalId | None = None
    custom: CustomValues | None = None


class ContactUpdate(InputModel):
    first_name: FirstName | None = None  # null clears it
    last_name: Omittable[LastName] = None
    email: Email | None = None
    phone: Phone | None = None
    tax_id: TaxId | None = None
    title: Title | None = None
    account_id: UUID | None = None
    owner_id: UUID | None = None
    external_id: ExternalId | None = None  # null clears it
    custom: CustomValues | None = None  # a patch: a field set to null is cleared


class ContactRead(RecordRead):
    first_name: str | None
    last_name: str
    email: str | None
    phone: str | None
    tax_id: str | None
    title: str | None
    account_id: UUID | None
    owner_id: UUID | None
    external_id: str | None
    custom: dict[str, Any]
