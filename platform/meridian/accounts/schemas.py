from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, ConfigDict, StringConstraints

from meridian.crud.schemas import (
    NOT_BLANK,
    CustomValues,
    ExternalId,
    InputModel,
    Omittable,
    RecordRead,
    padded,
)
from meridian.encryption.schemas import TaxId

Name = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=NOT_BLANK)]
# A DNS name with an alphabetic TLD, any case (stored lower-cased).
DOMAIN_PATTERN = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
Domain = Annotated[
    str,
    StringConstraints(max_length=255, pattern=padded(DOMAIN_PATTERN)),
    AfterValidator(str.lower),
]


class AccountCreate(InputModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "Globex", "domain": "globex.com"}]}
    )

    name: Name
    domain: Domain | None = None
    tax_id: TaxId | None = None
    parent_id: UUID | None = None
    owner_id: UUID | None = None
    external_id: ExternalId | None = None
    custom: CustomValues | None = None


class AccountUpdate(InputModel):
    name: Omittable[Name] = None
    domain: Domain | None = None
    tax_id: TaxId | None = None
    parent_id: UUID | None = None
    owner_id: UUID | None = None
    external_id: ExternalId | None = None  # null clears it
    custom: CustomValues | None = None  # a patch: a field set to null is cleared


class AccountRead(RecordRead):
    name: str
    domain: str | None
    tax_id: str | None
    parent_id: UUID | None
    owner_id: UUID | None
    external_id: str | None
    custom: dict[str, Any]
