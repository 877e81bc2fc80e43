"""User request and response bodies. Passwords are ``SecretStr``: they never appear in
a repr, a log line, a validation error or a dump of the model."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from pydantic import ConfigDict, Field, SecretStr, StringConstraints

from meridian.crud.schemas import NOT_BLANK, Email, Flag, InputModel, Omittable, RecordRead
from meridian.users import passwords

Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NOT_BLANK)]
# A role of the tenant (checked when assigned; templates and custom roles alike).
Role = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$"),
]
# Taken exactly as sent (a SecretStr is not trimmed: a trimmed password would not be
# the one the user chose).
Password = Annotated[
    SecretStr, Field(min_length=passwords.MIN_LENGTH, max_length=passwords.MAX_LENGTH)
]


class UserCreate(InputModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"email": "grace@example.com", "name": "Grace", "role": "sales_rep"}]
        }
    )

    email: Email
    name: Name
    role: Role
    manager_id: UUID | None = None
    # Absent: an invited user who cannot log in with a password yet.
    password: Password | None = None


class UserUpdate(InputModel):
    # manager_id null puts the user at the top; password null removes the password.
    name: Omittable[Name] = None
    role: Omittable[Role] = None
    manager_id: UUID | None = None
    active: Omittable[Flag] = None
    password: Password | None = None


class UserRead(RecordRead):
    email: str
    name: str
    role: str
    manager_id: UUID | None
    active: bool
