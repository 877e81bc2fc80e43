"""Role request and response bodies."""

from __future__ import annotations

from typing import Annotated, Literal, TypedDict

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from authz.policy import CATALOGUE, ROLE_NAME, is_known
from meridian.crud.schemas import Addressable, InputModel, Page, Versioned

RoleName = Annotated[str, StringConstraints(min_length=2, max_length=63, pattern=ROLE_NAME.pattern)]
Description = Annotated[str, StringConstraints(max_length=500)]
_KNOWN = "; ".join(f"{o}: {', '.join(sorted(a))}" for o, a in CATALOGUE.items())


class PermissionIn(InputModel):
    # The catalogue's (object, action) pairs, stated in the document too.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {"object": {"const": o}, "action": {"enum": [*sorted(actions)]}}}
                for o, actions in CATALOGUE.items()
            ]
        }
    )

    object: Annotated[str, StringConstraints(max_length=32, pattern="^[a-z_]+$")]
    action: Annotated[str, StringConstraints(max_length=32, pattern="^[a-z_]+$")]

    @model_validator(mode="after")
    def _known(self) -> PermissionIn:
        if not is_known(self.object, self.action):
            raise ValueError(f"unknown permission {self.object}:{self.action} (known: {_KNOWN})")
        return self


def _unique(value: list[PermissionIn]) -> list[PermissionIn]:
    seen = {(p.object, p.action) for p in value}
    if len(seen) != len(value):
        raise ValueError("permissions must not repeat")
    return value


# Distinct, so there can be no more than the catalogue holds.
Permissions = Annotated[
    list[PermissionIn],
    Field(
        max_length=sum(len(actions) for actions in CATALOGUE.values()),
        json_schema_extra={"uniqueItems": True},
    ),
    AfterValidator(_unique),
]


class RoleCreate(InputModel):
    name: RoleName
    inherits: RoleName | None = None
    permissions: Permissions = Field(default_factory=list)
    description: Description | None = None


class RoleUpdate(InputModel):
    """Custom roles only; every field optional. ``inherits: null`` removes the parent."""

    inherits: RoleName | None = None
    permissions: Permissions | None = None
    description: Description | None = None


class RolePermissions(InputModel):
    permissions: Permissions


class PermissionRead(BaseModel):
    object: str
    action: str


class RoleRead(Addressable, Versioned):
    name: str
    kind: Literal["template", "custom"]
    overridden: bool  # a template whose permissions this tenant replaced
    inherits: str | None
    description: str | None
    permissions: list[PermissionRead]  # granted to the role itself
    effective_permissions: list[PermissionRead]  # including inherited ones
    policy_version: int  # also the ETag: a role's effective rights depend on others


class RoleList(Page[RoleRead], Versioned):
    """Every role of the tenant; its ETag is the policy version, like each role's."""


class PermissionBody(TypedDict):
    object: str
    action: str


class RoleBody(TypedDict):
    """A role as the service hands it to the router (``RoleRead``'s JSON)."""

    name: str
    kind: str
    overridden: bool
    inherits: str | None
    description: str | None
    permissions: list[PermissionBody]
    effective_permissions: list[PermissionBody]
    policy_version: int
