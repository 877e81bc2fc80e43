"""What the token endpoint needs to know about a user, read from the tenant's shard.

Raw reads on the shard's read path (one round trip to enter the tenant, one query),
done before Authlib's synchronous code runs in its worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from uuid import UUID

import asyncpg

from meridian.contacts.schemas import normalise_email  # the form users' emails are stored in
from tenancy.context import TenantContext

if TYPE_CHECKING:
    from meridian.runtime import Runtime

_COLUMNS = "id, role, active, password_hash"
_BY_EMAIL = f"SELECT {_COLUMNS} FROM app_user WHERE tenant_id = $1 AND email = $2"  # noqa: S608
_BY_ID = f"SELECT {_COLUMNS} FROM app_user WHERE tenant_id = $1 AND id = $2"  # noqa: S608


@dataclass(frozen=True, slots=True)
class LoginUser:
    id: UUID
    role: str
    active: bool
    password_hash: str | None  # None: the user cannot sign in with a password


def _user(row: asyncpg.Record | None) -> LoginUser | None:
    if row is None:
        return None
    return LoginUser(UUID(str(row["id"])), row["role"], row["active"], row["password_hash"])


async def user_by_email(rt: Runtime, tenant: TenantContext, email: str) -> LoginUser | None:
    async with rt.router.reader(tenant, on_stale=rt.refresh_tenant) as conn:
        row = await conn.fetchrow(_BY_EMAIL, tenant.tenant_id, normalise_email(email))
    return _user(row)


async def user_by_id(rt: Runtime, tenant: TenantContext, user_id: UUID) -> LoginUser | None:
    async with rt.router.reader(tenant, on_stale=rt.refresh_tenant) as conn:
        row = await conn.fetchrow(_BY_ID, tenant.tenant_id, user_id)
    return _user(row)
