"""Contact request and response bodies, with e-mail and phone normalisation."""

from __future__ import annotations

import re
from typing import Annotated
from uuid import UUID

from pydantic import AfterValidator, StringConstraints

from meridian.crud.schemas import InputModel, RecordRead
from meridian.encryption.schemas import TaxId

FirstName = Annotated[str, StringConstraints(max_length=100)]
LastName = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Title = Annotated[str, StringConstraints(max_length=200)]

# A pragmatic address check (email-validator is not a dependency): an RFC 5322
# dot-atom local part and a DNS host name with an alphabetic or punycode TLD.
_LOCAL = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_HOST = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})$"
)
_PHONE = re.compile(r"^\+?[0-9 ()-]+$")


def normalise_email(value: str) -> str:
    """Trimmed and lower-cased, the one form stored and filtered on."""
    return value.strip().lower()


def _check_email(value: str) -> str:
    value = normalise_email(value)
    local, at, host = value.rpartition("@")
    if not at or not 1 <= len(local) <= 64 or len(host) > 253:
        raise ValueError("must be an email address such as ada@example.com")
    if not _LOCAL.match(local) or not _HOST.match(host):
        raise ValueError("must be an email address such as ada@example.com")
    return value


def _check_phone(value: str) -> str:
    digits = sum(ch.isdigit() for ch in value)
    # E.164 numbers have at most 15 digits; fewer than 3 is never a reachable number.
    if not _PHONE.match(value) or not 3 <= digits <= 15:
        raise ValueError(
            "must be a phone number: an optional leading +, then digits, spaces, dashes "
            "or parentheses (3 to 15 digits)"
        )
    return value


Email = Annotated[str, StringConstraints(max_length=320), AfterValidator(_check_email)]
Phone = Annotated[str, StringConstraints(max_length=40), AfterValidator(_check_phone)]


class ContactCreate(InputModel):
    first_name: FirstName = ""
    last_name: LastName
    email: Email | None = None
    phone: Phone | None = None
    tax_id: TaxId | None = None
    title: Title | None = None
    account_id: UUID | None = None
    owner_id: UUID | None = None


class ContactUpdate(InputModel):
    # first_name and last_name are optional; an explicit null is refused by the service.
    first_name: FirstName | None = None
    last_name: LastName | None = None
    email: Email | None = None
    phone: Phone | None = None
    tax_id: TaxId | None = None
    title: Title | None = None
    account_id: UUID | None = None
    owner_id: UUID | None = None


class ContactRead(RecordRead):
    first_name: str
    last_name: str
    email: str | None
    phone: str | None
    tax_id: str | None
    title: str | None
    account_id: UUID | None
    owner_id: UUID | None
