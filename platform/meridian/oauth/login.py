"""What the token endpoint needs to know about a user, read from the tenant's shard.

Reads on the shard's read path (the users repository's queries; one round trip to
enter the tenant, one query), done before Authlib's synchronous code runs in its
worker thread. They take the shard router, not the runtime: the runtime builds the
authorization server, which uses ``LoginUser``, so importing the runtime here would
close a circle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from uuid import UUID

from meridian.crud.schemas import normalise_email  # the form users' emails are stored in
from meridian.events import outbox
from meridian.users.repository import LoginRow, UserRepository
from sharding.router import OnStale, ShardRouter
from tenancy.context import TenantContext

logger = logging.getLogger("meridian.oauth.login")

# The audit's sign-in events (kind "auth", which only audit:read shows: users:read,
# which every sales rep holds, must not tell who signed in when).
SIGN_IN_KIND = "auth"
SIGNED_IN = "auth.signed_in"
SIGN_IN_FAILED = "auth.sign_in_failed"


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


async def record_sign_in(
    router: ShardRouter,
    tenant: TenantContext,
    *,
    client_id: str,
    user_id: UUID | None,
    failure: str | None,
    on_stale: OnStale,
) -> None:
    """Append a sign-in (``failure`` None) or a failed one to the tenant's event log, in
    a shard write transaction of its own (a sign-in changes no shard row to ride on).

    Never the e-mail or the password: the user's id when the e-mail is a user's, and
    why it failed. A failure to append is logged and swallowed: the audit must not
    decide whether someone may sign in, and the answer is already made."""
    if failure is None:
        type_, actor = SIGNED_IN, outbox.EventActor("user", str(user_id))
    else:
        type_, actor = SIGN_IN_FAILED, outbox.EventActor("client", client_id)
    extra = {
        "user_id": str(user_id) if user_id is not None else None,
        "client_id": client_id,
        **({"reason": failure} if failure is not None else {}),
    }
    try:
        async with router.transaction(tenant, write=True, on_stale=on_stale) as session:
            outbox.act_as(session, actor)
            outbox.record(session, tenant.tenant_id, type_, SIGN_IN_KIND, user_id, extra=extra)
    except Exception:
        logger.exception(
            "%s of user %s (client %s) in tenant %s not recorded",
            type_,
            user_id,
            client_id,
            tenant.tenant_id,
        )
