"""The async half of the token and revocation endpoints.

Before Authlib runs (in a worker thread, see ``meridian.oauth.server``): load the
client, its tenant, and what the grant needs — the user and a password check for the
password grant, the refresh token and its user for the refresh grant. After: store the
new refresh token and claim the old one in one transaction, or revoke a family.

Grant-specific loads happen only for a caller that presented its client's secret (a
cheap SHA-256 comparison, repeated by Authlib): nobody else makes us read a shard or
run a password hash.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.responses import Response

from meridian.crud import control
from meridian.directory import CachedDirectory
from meridian.ids import new_id
from meridian.oauth.clients import ClientRecord, find_client
from meridian.oauth.login import record_sign_in, user_by_email, user_by_id
from meridian.oauth.notbefore import NotBeforeStore
from meridian.oauth.refresh import (
    claim_refresh_token,
    find_refresh_token,
    revoke_family,
    store_refresh_token,
)
from meridian.oauth.server import (
    Exchange,
    MeridianAuthorizationServer,
    StarletteOAuth2Request,
    requested_client_id,
    requested_client_secret,
)
from meridian.users.passwords import MAX_LENGTH, verify_in_thread
from meridian.web.responses import json_response
from sharding.router import OnStale, ShardRouter
from tenancy.context import TenantContext, TenantStatus

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass(frozen=True, slots=True)
class TokenDeps:
    """What the token and revocation endpoints use, handed in by the router: the control
    plane (clients, refresh tokens; through the kit's ``meridian.crud.control`` flows),
    the directory and the shards (the tenant, its users), the not-before times, Authlib's
    server, and the settings they need."""

    control: AsyncEngine
    directory: CachedDirectory
    router: ShardRouter
    refresh_tenant: OnStale
    revocations: NotBeforeStore
    server: MeridianAuthorizationServer
    issuer: str
    refresh_token_ttl: int


def oauth_error(status: int, error: str, description: str) -> Response:
    """An error in OAuth's own format (RFC 6749 §5.2), which OAuth clients expect."""
    return json_response({"error": error, "error_description": description}, status, NO_STORE)


async def _client(
    rt: TokenDeps, headers: Mapping[str, str], form: Mapping[str, str]
) -> tuple[ClientRecord | None, bool]:
    """The client the request names, and whether it presented the right secret."""
    client_id = requested_client_id(headers, form)
    client = None
    if client_id:
        client = await control.read(rt.control, lambda conn: find_client(conn, client_id))
    secret = requested_client_secret(headers, form) or ""
    authenticated = client is not None and not client.revoked and client.secret_matches(secret)
    return client, authenticated


def _request(
    rt: TokenDeps,
    path: str,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    form: Mapping[str, str],
) -> StarletteOAuth2Request:
    return StarletteOAuth2Request("POST", rt.issuer.rstrip("/") + path, headers, query, form)


async def token(
    rt: TokenDeps, headers: Mapping[str, str], query: Mapping[str, str], form: Mapping[str, str]
) -> Response:
    client, authenticated = await _client(rt, headers, form)
    exchange = Exchange(client)
    signing_in = False
    if authenticated and client is not None and client.tenant_id is not None:
        # Only a caller holding the secret learns the tenant's state; anyone else gets
        # the usual invalid_client from Authlib.
        tenant = await rt.directory.resolve(client.tenant_id)
        if tenant is None or tenant.status is not TenantStatus.ACTIVE:
            state = tenant.status.value if tenant else "deleted"
            return oauth_error(400, "unauthorized_client", f"The client's tenant is {state}.")
        exchange.tenant = tenant
        grant_type = form.get("grant_type")
        if grant_type == "password" and rt.server.password_grant:
            signing_in = await _prepare_login(rt, exchange, tenant, form)
        elif grant_type == "refresh_token":
            await _prepare_refresh(rt, exchange, client, tenant, form)
        subject = exchange.login.id if exchange.login else None
        if exchange.refresh is not None:
            subject = exchange.refresh.user_id
        await rt.revocations.wait_until_past(tenant.tenant_id, subject)
    response = await rt.server.token_response(
        _request(rt, "/oauth/token", headers, query, form), exchange
    )
    answer = await _persist(rt, exchange, response)
    if signing_in and client is not None and exchange.tenant is not None:
        # For the audit, once the answer is decided (and without changing it).
        await record_sign_in(
            rt.router,
            exchange.tenant,
            client_id=client.client_id,
            user_id=exchange.login.id if exchange.login else None,
            failure=_sign_in_failure(exchange, answer),
            on_stale=rt.refresh_tenant,
        )
    return answer


async def _prepare_login(
    rt: TokenDeps, exchange: Exchange, tenant: TenantContext, form: Mapping[str, str]
) -> bool:
    """Loads the user and checks the password; whether this is a sign-in attempt (a
    user's credentials for the client's own tenant), which the audit records."""
    slug, username, password = form.get("tenant"), form.get("username"), form.get("password")
    exchange.tenant_matches = slug == tenant.slug
    if not exchange.tenant_matches or not username or password is None:
        return False  # Authlib answers (missing parameter, or another tenant)
    exchange.login = await user_by_email(rt.router, tenant, username, on_stale=rt.refresh_tenant)
    if len(password) > MAX_LENGTH:
        return True  # no stored password is that long; do not spend a hash on it
    stored = exchange.login.password_hash if exchange.login else None
    # Verified even for unknown users (against a dummy hash): same time either way.
    # In a worker thread, a few at a time (each hash takes tens of MiB and ~50 ms).
    exchange.password_ok = await verify_in_thread(password, stored)
    return True


def _sign_in_failure(exchange: Exchange, response: Response) -> str | None:
    """Why a sign-in failed, for the audit (None: it succeeded). Only audit readers see
    it; the caller gets one answer for all of them."""
    if response.status_code == 200 and exchange.user_id is not None:
        return None
    user = exchange.login
    if user is None:
        return "unknown_user"
    if user.password_hash is None:
        return "no_password"
    if not exchange.password_ok:
        return "wrong_password"
    if not user.active:
        return "inactive"
    try:
        error = orjson.loads(bytes(response.body)).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    return str(error or "refused")


async def _prepare_refresh(
    rt: TokenDeps,
    exchange: Exchange,
    client: ClientRecord,
    tenant: TenantContext,
    form: Mapping[str, str],
) -> None:
    presented = form.get("refresh_token")
    if not presented:
        return
    record = await control.read(rt.control, lambda conn: find_refresh_token(conn, presented))
    exchange.refresh = record
    if record is not None and record.client_id == client.client_id and record.used_at is None:
        # The user must still exist and be active (checked by the grant).
        exchange.refresh_user = await user_by_id(
            rt.router, tenant, record.user_id, on_stale=rt.refresh_tenant
        )


async def _persist(rt: TokenDeps, exchange: Exchange, response: Response) -> Response:
    family = exchange.revoke_family
    if response.status_code != 200:
        if family is not None:
            await control.transact(rt.control, lambda conn: revoke_family(conn, family))
        return response
    issued = exchange.issued_refresh_token
    if issued is None:
        return response  # client credentials: nothing to store
    client, tenant, user_id = exchange.client, exchange.tenant, exchange.user_id
    if client is None or tenant is None or user_id is None:  # Authlib issued it, so set
        raise RuntimeError("a refresh token was issued without client, tenant or user")
    used = exchange.used_refresh

    async def rotate(conn: AsyncConnection) -> UUID | None:
        # Claim the old token and store its successor atomically: of two concurrent
        # uses of one token exactly one claims it; the other is a reuse (its family).
        if used is not None and not await claim_refresh_token(conn, used.id):
            await revoke_family(conn, used.family_id)
            return used.family_id
        await store_refresh_token(
            conn,
            issued,
            family_id=used.family_id if used is not None else new_id(),
            tenant_id=tenant.tenant_id,
            user_id=user_id,
            client_id=client.client_id,
            scope=exchange.issued_scope,
            ttl=rt.refresh_token_ttl,
        )
        return None

    reused = await control.transact(rt.control, rotate)
    if reused is not None:
        # The access token minted in the thread is dropped: it never leaves the server.
        return oauth_error(
            400, "invalid_grant", "The refresh token was already used; the session is revoked."
        )
    return response


async def revoke(
    rt: TokenDeps, headers: Mapping[str, str], query: Mapping[str, str], form: Mapping[str, str]
) -> Response:
    client, authenticated = await _client(rt, headers, form)
    exchange = Exchange(client)
    presented = form.get("token")
    if authenticated and presented:
        exchange.refresh = await control.read(
            rt.control, lambda conn: find_refresh_token(conn, presented)
        )
    response = await rt.server.revocation_response(
        _request(rt, "/oauth/revoke", headers, query, form), exchange
    )
    family = exchange.revoke_family
    if response.status_code == 200 and family is not None:
        await control.transact(rt.control, lambda conn: revoke_family(conn, family))
    return response
