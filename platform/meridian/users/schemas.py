"""User request and response bodies. Passwords are ``SecretStr``: they never appear in
a repr, a log line, a validation error or a dump of the model."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from pydantic import ConfigDict, Field, SecretStr, StringConstraints

from meridian.contacts.schemas import Email
from meridian.crud.schemas import InputModel, RecordRead
from meridian.users import passwords

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
# Free names: whether a role exists and what it may do is Casbin's business.
Role = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$"),
]
Password = Annotated[
    SecretStr, Field(min_length=passwords.MIN_LENGTH, max_length=passwords.MAX_LENGTH)
]


# Passwords are taken exactly as sent (a trimmed password would not be the one the
# user chose), so these bodies trim per field instead of model-wide.
_KEEP_WHITESPACE = ConfigDict(extra="forbid", str_strip_whitespace=False)


class UserCreate(InputModel):
    model_config = _KEEP_WHITESPACE

    email: Email
    name: Name
    role: Role
    manager_id: UUID | None = None
    # Absent: an invited user who cannot log in with a password yet.
    password: Password | None = None


class UserUpdate(InputModel):
    model_config = _KEEP_WHITESPACE

    # Optional; an explicit null is refused by the service for name, role and active.
    # manager_id null puts the user at the top; password null removes the password.
    name: Name | None = None
    role: Role | None = None
    manager_id: UUID | None = None
    active: bool | None = None
    password: Password | None = None


class UserRead(RecordRead):
    email: str
    name: str
    role: str
    manager_id: UUID | None
    active: bool
