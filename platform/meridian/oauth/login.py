"""What the token endpoint needs to know about a user, read from the tenant's shard.

Reads on the shard's read path (the users repository's queries; one round trip to
enter the tenant, one query), done before Authlib's synchronous code runs in its
worker thread. They take the shard router, not the runtime: the runtime builds the
authorization server, which uses ``LoginUser``, so importing the runtime here would
close a circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from meridian.crud.schemas import normalise_email  # the form users' emails are stored in
from meridian.users.repository import LoginRow, UserRepository
from sharding.router import OnStale, ShardRouter
from tenancy.context import TenantContext


@dataclass(frozen=True, slots=True)
class LoginUser:
    id: UUID
    role: str
    active: bool
    password_hash: str | None  # None: the user cannot sign in with a password


def _user(row: LoginRow | None) -> LoginUser | None:
    if row is None:
        return None
    return LoginUser(UUID(str(row.id)), row.role, row.active, row.password_hash)


async def user_by_email(
    router: ShardRouter, tenant: TenantContext, email: str, *, on_stale: OnStale
) -> LoginUser | None:
    async with router.reader(tenant, on_stale=on_stale) as conn:
        row = await UserRepository.fetch_login(conn, tenant.tenant_id, email=normalise_email(email))
    return _user(row)


async def user_by_id(
    router: ShardRouter, tenant: TenantContext, user_id: UUID, *, on_stale: OnStale
) -> LoginUser | None:
    async with router.reader(tenant, on_stale=on_stale) as conn:
        row = await UserRepository.fetch_login(conn, tenant.tenant_id, user_id=user_id)
    return _user(row)
