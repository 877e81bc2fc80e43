from __future__ import annotations

import re
from typing import Annotated
from uuid import UUID

from pydantic import AfterValidator, StringConstraints

from meridian.crud.schemas import InputModel, RecordRead
from meridian.encryption.schemas import TaxId

Name = Annotated[str, StringConstraints(min_length=1, max_length=255)]
_DOMAIN = re.compile(r"^([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def _check_domain(value: str) -> str:
    value = value.lower()
    if not _DOMAIN.match(value):
        raise ValueError("must be a domain name such as example.com")
    return value


Domain = Annotated[str, StringConstraints(max_length=255), AfterValidator(_check_domain)]


class AccountCreate(InputModel):
    name: Name
    domain: Domain | None = None
    tax_id: TaxId | None = None
    parent_id: UUID | None = None
    owner_id: UUID | None = None


class AccountUpdate(InputModel):
    name: Name | None = None  # optional; an explicit null is refused by the service
    domain: Domain | None = None
    tax_id: TaxId | None = None
    parent_id: UUID | None = None
    owner_id: UUID | None = None


class AccountRead(RecordRead):
    name: str
    domain: str | None
    tax_id: str | None
    parent_id: UUID | None
    owner_id: UUID | None
