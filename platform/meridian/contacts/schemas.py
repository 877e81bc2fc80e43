"""Contact request and response bodies, with e-mail and phone normalisation."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from pydantic import AfterValidator, ConfigDict, StringConstraints

from meridian.crud.schemas import NOT_BLANK, InputModel, Omittable, RecordRead, padded
from meridian.encryption.schemas import TaxId

FirstName = Annotated[str, StringConstraints(max_length=100)]
LastName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NOT_BLANK)]
Title = Annotated[str, StringConstraints(max_length=200)]

# A pragmatic address check (email-validator is not a dependency): an RFC 5322
# dot-atom local part and a DNS host name with an alphabetic or punycode TLD, any case
# (stored lower-cased). The pattern is both the check and what the document states.
_ATOM = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_PATTERN = (
    rf"^{_ATOM}(\.{_ATOM})*@({_LABEL}\.)+([A-Za-z]{{2,63}}|[Xx][Nn]--[A-Za-z0-9-]{{1,59}})$"
)
# An optional leading +, then digits, spaces, dashes or parentheses: 3 to 15 digits
# (E.164 has at most 15; fewer than 3 is never a reachable number).
PHONE_PATTERN = r"^\+?[ ()-]*([0-9][ ()-]*){3,15}$"


def normalise_email(value: str) -> str:
    """Trimmed and lower-cased, the one form stored and filtered on."""
    return value.strip().lower()


Email = Annotated[
    str,
    StringConstraints(max_length=320, pattern=padded(EMAIL_PATTERN)),
    AfterValidator(normalise_email),
]
Phone = Annotated[str, StringConstraints(max_length=40, pattern=padded(PHONE_PATTERN))]


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


class ContactUpdate(InputModel):
    first_name: FirstName | None = None  # null clears it
    last_name: Omittable[LastName] = None
    email: Email | None = None
    phone: Phone | None = None
    tax_id: TaxId | None = None
    title: Title | None = None
    account_id: UUID | None = None
    owner_id: UUID | None = None


class ContactRead(RecordRead):
    first_name: str | None
    last_name: str
    email: str | None
    phone: str | None
    tax_id: str | None
    title: str | None
    account_id: UUID | None
    owner_id: UUID | None
