"""Who acts inside a tenant: a user (with a role and a place in the reporting line) or
an OAuth client acting for the tenant as a whole (with the role it was given).

A user's role and state come from the users domain's query, which the runtime holds
(``Runtime.actor_sql`` in one statement, ``Runtime.load_actor`` in a read transaction,
as the shard's read strategy says): the kit does not import the users domain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from cache.codec import JSON
from cache.core import Policy
from meridian.errors import Unauthorized
from meridian.principal import Principal
from tenancy.context import TenantContext

if TYPE_CHECKING:
    from meridian.deps import TenantAccess
    from meridian.runtime import Runtime

# Role of client tokens issued before clients carried one: the tenant's own clients.
DEFAULT_CLIENT_ROLE = "admin"

# A user's role and state, read on every request of a user token. Cached because the
# request path must not pay a shard round trip for it; invalidated (every instance)
# when the user changes, so a role change or a deactivation applies at once, and
# within ACTOR_POLICY.l1_ttl seconds even if invalidations cannot arrive (Redis down);
# while they do arrive, an entry is kept until invalidated (hold, at most its L2 TTL).
ACTOR_KIND = "actor"
ACTOR_POLICY = Policy(ttl=300, l1_ttl=5, negative_ttl=5, hold=300)
# Generations per bucket of user ids, as for records: a change to one user does not
# make every user of the tenant miss.
ACTOR_BUCKETS = 64


@dataclass(frozen=True, slots=True)
class Actor:
    user_id: UUID | None  # None: an OAuth client acting for the whole tenant
    role: str


def _bucket(user_id: UUID) -> str:
    return str(user_id.int % ACTOR_BUCKETS)


async def resolve_actor(runtime: Runtime, tenant: TenantContext, principal: Principal) -> Actor:
    if principal.user_id is None:
        return Actor(None, principal.role or DEFAULT_CLIENT_ROLE)
    user_id = principal.user_id

    async def in_transaction(conn: Any) -> dict[str, Any] | None:
        found = await runtime.load_actor(conn, tenant.tenant_id, user_id)
        return {"role": found.role, "active": found.active} if found is not None else None

    async def load() -> dict[str, Any] | None:
        # As the shard reads rows: one round trip where it can, instead of three.
        row = await runtime.router.read_row(
            tenant, runtime.actor_sql, (user_id,), in_transaction, on_stale=runtime.refresh_tenant
        )
        return {"role": row["role"], "active": row["active"]} if row is not None else None

    state = await runtime.cache.get_or_load(
        str(tenant.tenant_id), ACTOR_KIND, str(user_id), load, JSON, ACTOR_POLICY, _bucket(user_id)
    )
    # A deleted tenant's user, a deactivated user: the token no longer stands for anyone.
    if state is None or state.get("active") is not True:
        raise Unauthorized("The token's user is not an active user of the tenant.")
    return Actor(user_id, str(state["role"]))


async def forget_actor(access: TenantAccess, user_id: UUID) -> None:
    """After a committed change of a user: every instance must read it again."""
    tenant_id = str(access.tenant.tenant_id)
    await access.runtime.cache.invalidate(tenant_id, ACTOR_KIND, _bucket(user_id))
