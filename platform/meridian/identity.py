"""Who acts inside a tenant: a user (with a role and a place in the reporting line) or
an OAuth client acting for the tenant as a whole (with the role it was given)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from uuid import UUID

from meridian.errors import Unauthorized
from meridian.oauth.principal import Principal
from tenancy.context import TenantContext

if TYPE_CHECKING:
    from meridian.runtime import Runtime

# Role of client tokens issued before clients carried one: the tenant's own clients.
DEFAULT_CLIENT_ROLE = "admin"


@dataclass(frozen=True, slots=True)
class Actor:
    user_id: UUID | None  # None: an OAuth client acting for the whole tenant
    role: str


async def resolve_actor(runtime: Runtime, tenant: TenantContext, principal: Principal) -> Actor:
    if principal.user_id is None:
        return Actor(None, principal.role or DEFAULT_CLIENT_ROLE)
    raise Unauthorized("User tokens are not accepted yet.")
