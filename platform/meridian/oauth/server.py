"""Authlib's authorization server, adapted once to Starlette/FastAPI.

Authlib's server side is synchronous and its hooks (``query_client``,
``authenticate_user``, ``save_token``, …) would do I/O. So every request is an
:class:`Exchange`: the async side (``meridian.oauth.service``) loads what the hooks
will ask for — the client, the user, the refresh token — runs Authlib's protocol work
(client authentication, grant rules, JWT signing) in a worker thread with the exchange
handed over through a context variable, and afterwards writes what the hooks recorded
(new refresh tokens, revocations). No hook touches a database.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote
from uuid import UUID

from authlib.oauth2 import AuthorizationServer, OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749 import ClientMixin, InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc6749.grants import (
    ClientCredentialsGrant,
    RefreshTokenGrant,
    ResourceOwnerPasswordCredentialsGrant,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc.jwk import KeySet
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from meridian.oauth.clients import ClientRecord
from meridian.oauth.keys import ALGORITHM, KeyStore
from meridian.oauth.login import LoginUser
from meridian.oauth.refresh import RefreshRecord, new_refresh_token
from meridian.principal import SCOPE_ADMIN, TENANT_SCOPES
from tenancy.context import TenantContext

SUPPORTED_SCOPES = [*TENANT_SCOPES, SCOPE_ADMIN]
AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
# Access-token claims beyond RFC 9068's: the tenant, and for client tokens the role the
# client acts with. A user token has ``sub`` = user id (≠ ``client_id``) and no role:
# the user's role is read from the user record on every request.
CLAIM_TENANT = "tenant_id"
CLAIM_ROLE = "role"
_BAD_LOGIN = "The email or password is wrong, or the user may not sign in."


@dataclass
class Exchange:
    """One token or revocation request: what was loaded before Authlib runs, and what
    Authlib's hooks decided, to be written afterwards."""

    client: ClientRecord | None
    tenant: TenantContext | None = None
    # password grant: whether the ``tenant`` parameter names the client's own tenant,
    # the user with that email (None: unknown) and whether the password matched.
    tenant_matches: bool = False
    login: LoginUser | None = None
    password_ok: bool = False
    # refresh grant and revocation: the presented refresh token and (refresh) its user.
    refresh: RefreshRecord | None = None
    refresh_user: LoginUser | None = None
    # decided by the hooks
    user_id: UUID | None = None
    issued_refresh_token: str | None = None
    issued_scope: str = ""
    used_refresh: RefreshRecord | None = None
    revoke_family: UUID | None = None


_exchange: ContextVar[Exchange | None] = ContextVar("oauth_exchange", default=None)


def _current() -> Exchange:
    exchange = _exchange.get()
    if exchange is None:  # only reachable by calling Authlib outside run()
        raise RuntimeError("Authlib hook called outside an exchange")
    return exchange


class StarletteOAuth2Request(OAuth2Request):  # type: ignore[misc]
    """An OAuth2Request built from an already-read Starlette request."""

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        form: Mapping[str, str],
    ) -> None:
        # Keep the case-insensitive header mapping: Authlib looks up "Authorization".
        super().__init__(method, uri, headers=headers)
        self._query = dict(query)
        self._form = dict(form)
        self.payload = BasicOAuth2Payload({**self._query, **self._form})

    @property
    def args(self) -> dict[str, str]:
        return self._query

    @property
    def form(self) -> dict[str, str]:
        return self._form


class Client(ClientMixin):  # type: ignore[misc]
    def __init__(self, record: ClientRecord) -> None:
        self.record = record

    def get_client_id(self) -> str:
        return self.record.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        allowed = self.record.scope.split()
        if not scope:
            return " ".join(allowed)
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return self.record.secret_matches(client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type == "client_credentials":
            return True
        # Users belong to a tenant: platform-admin clients have no users to sign in.
        return grant_type in ("password", "refresh_token") and self.record.tenant_id is not None


class User:
    def __init__(self, user_id: UUID) -> None:
        self.id = user_id

    def get_user_id(self) -> str:
        return str(self.id)


class _RefreshCredential:
    """A refresh token as Authlib's grant and revocation endpoint see it."""

    def __init__(self, record: RefreshRecord) -> None:
        self.record = record

    def check_client(self, client: Client) -> bool:
        return bool(self.record.client_id == client.get_client_id())

    def get_scope(self) -> str:
        return self.record.scope


class _ClientCredentials(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS


class _PasswordGrant(ResourceOwnerPasswordCredentialsGrant):  # type: ignore[misc]
    """First-party sign-in (``username`` = email, ``tenant`` = the tenant's slug).

    RFC 9700 §2.4: the password grant MUST NOT be used, because the client sees the
    password. It exists for Meridian's own apps only, behind ``MERIDIAN_PASSWORD_GRANT``,
    and only a client of the user's own tenant may use it.
    """

    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

    def authenticate_user(self, username: str, password: str) -> User:
        exchange = _current()
        if not self.request.form.get("tenant"):
            raise InvalidRequestError("Missing 'tenant' in request.")
        if not exchange.tenant_matches:
            raise InvalidGrantError("The client may only sign in users of its own tenant.")
        user = exchange.login
        # One answer for unknown user, wrong password, no password and deactivated
        # user: a distinct one would tell which emails have accounts.
        if user is None or not exchange.password_ok or not user.active:
            raise InvalidGrantError(_BAD_LOGIN)
        return User(user.id)


class _RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotated on every use

    def authenticate_refresh_token(self, refresh_token: str) -> _RefreshCredential | None:
        exchange = _current()
        record = exchange.refresh
        if record is None or record.revoked_at is not None:
            return None
        if record.used_at is not None:
            # Presented twice: someone else holds it too. End the whole session.
            exchange.revoke_family = record.family_id
            raise InvalidGrantError("The refresh token was already used; the session is revoked.")
        if record.expires_at <= datetime.now(UTC):
            return None
        return _RefreshCredential(record)

    def authenticate_user(self, refresh_token: _RefreshCredential) -> User:
        user = _current().refresh_user
        if user is None or user.id != refresh_token.record.user_id or not user.active:
            raise InvalidGrantError("The user of this refresh token may no longer sign in.")
        return User(user.id)

    def revoke_old_credential(self, refresh_token: _RefreshCredential) -> None:
        # Marked used after the thread, atomically, together with storing the new one.
        _current().used_refresh = refresh_token.record


class _UnsupportedTokenType(OAuth2Error):  # type: ignore[misc]
    error = "unsupported_token_type"
    status_code = 400


class _Revocation(RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009. Refresh tokens are revoked with their whole family. Access tokens are
    JWTs that cannot be recalled one by one: they are accepted (200, as RFC 7009 asks
    for tokens the server cannot revoke) and expire within the access-token TTL; the
    not-before revocation endpoints void them at once."""

    CLIENT_AUTH_METHODS = AUTH_METHODS

    def check_params(self, request: OAuth2Request, client: Client) -> None:
        if "token" not in request.form:
            raise InvalidRequestError("Missing 'token' in request.")
        hint = request.form.get("token_type_hint")
        if hint and hint not in self.SUPPORTED_TOKEN_TYPES:
            # RFC 7009 §2.2.1 makes this a plain error response (400); Authlib says 401.
            raise _UnsupportedTokenType("The token_type_hint is not supported.")

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        # The hint is only a hint (RFC 7009 §2.1): look the token up whatever it says.
        record = _current().refresh
        return _RefreshCredential(record) if record is not None else None

    def revoke_token(self, token: _RefreshCredential, request: OAuth2Request) -> None:
        _current().revoke_family = token.record.family_id


class _TokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]
    def __init__(self, keys: KeyStore, issuer: str, audience: str, ttl: int) -> None:
        super().__init__(
            issuer=issuer,
            alg=ALGORITHM,
            expires_generator=ttl,
            refresh_token_generator=_refresh_token,
        )
        self._keys = keys
        self._audience = audience

    def get_jwks(self) -> KeySet:
        # One key only: a multi-key set would sign with a random key, and a bare key
        # would lose its kid.
        return KeySet([self._keys.signing_key()])

    def get_audiences(self, client: Client, user: Any, scope: str) -> str:
        return self._audience

    def generate(
        self,
        grant_type: str,
        client: Client,
        user: Any = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        token: dict[str, Any] = super().generate(
            grant_type, client, user, scope, expires_in, include_refresh_token
        )
        # Authlib leaves an empty scope out (a request narrowed to nothing), but RFC 6749
        # §5.1 requires it whenever it differs from the request, and TokenResponse says
        # it is always there.
        token.setdefault("scope", "")
        return token

    def get_extra_claims(
        self, client: Client, grant_type: str, user: User | None, scope: str
    ) -> dict[str, Any]:
        claims: dict[str, Any] = {}
        tenant_id = client.record.tenant_id
        if tenant_id is not None:
            claims[CLAIM_TENANT] = str(tenant_id)
        if user is None:
            claims[CLAIM_ROLE] = client.record.role
        return claims


def _refresh_token(**_: Any) -> str:
    return new_refresh_token()


class MeridianAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(
        self,
        keys: KeyStore,
        *,
        issuer: str,
        audience: str,
        ttl: int,
        password_grant: bool = False,
    ) -> None:
        super().__init__(scopes_supported=SUPPORTED_SCOPES)
        self.issuer = issuer
        self.password_grant = password_grant
        self.register_grant(_ClientCredentials)
        if password_grant:
            # Unregistered, it is answered like any unknown grant: unsupported_grant_type.
            self.register_grant(_PasswordGrant)
        self.register_grant(_RefreshGrant)
        self.register_endpoint(_Revocation)
        self.register_token_generator("default", _TokenGenerator(keys, issuer, audience, ttl))

    @property
    def grant_types(self) -> list[str]:
        return [
            "client_credentials",
            *(["password"] if self.password_grant else []),
            "refresh_token",
        ]

    def query_client(self, client_id: str) -> Client | None:
        record = _current().client
        if record is None or record.client_id != client_id or record.revoked:
            # Unknown and revoked clients fail like a wrong secret (401 invalid_client,
            # same text): a distinct answer would tell which client ids exist.
            record = ClientRecord(client_id, secret_hash="", tenant_id=None, scope="", revoked=True)
        return Client(record)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        # Access tokens are self-contained JWTs; a refresh token is stored after the
        # thread (service.persist), by the async code that owns the connection.
        exchange = _current()
        user = request.user
        exchange.user_id = user.id if isinstance(user, User) else None
        exchange.issued_refresh_token = token.get("refresh_token")
        exchange.issued_scope = str(token.get("scope") or "")

    def create_oauth2_request(self, request: StarletteOAuth2Request) -> StarletteOAuth2Request:
        return request

    def handle_response(
        self, status: int, body: Any, headers: list[tuple[str, str]]
    ) -> JSONResponse:
        return JSONResponse(body, status_code=status, headers=dict(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    async def _in_thread(
        self, exchange: Exchange, work: Callable[[], JSONResponse]
    ) -> JSONResponse:
        def run() -> JSONResponse:
            reset = _exchange.set(exchange)
            try:
                return work()
            finally:
                _exchange.reset(reset)

        return await run_in_threadpool(run)

    async def token_response(
        self, request: StarletteOAuth2Request, exchange: Exchange
    ) -> JSONResponse:
        def work() -> JSONResponse:
            response: JSONResponse = self.create_token_response(request)
            return response

        return await self._in_thread(exchange, work)

    async def revocation_response(
        self, request: StarletteOAuth2Request, exchange: Exchange
    ) -> JSONResponse:
        def work() -> JSONResponse:
            response: JSONResponse = self.create_endpoint_response(
                _Revocation.ENDPOINT_NAME, request
            )
            return response

        return await self._in_thread(exchange, work)


def _requested_credentials(
    headers: Mapping[str, str], form: Mapping[str, str]
) -> tuple[str | None, str | None]:
    auth = headers.get("authorization", "")
    if auth[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        user, sep, secret = decoded.partition(":")
        return (unquote(user), unquote(secret)) if sep else (None, None)
    form_id, form_secret = form.get("client_id"), form.get("client_secret")
    return (
        form_id if isinstance(form_id, str) else None,
        form_secret if isinstance(form_secret, str) else None,
    )


def requested_client_id(headers: Mapping[str, str], form: Mapping[str, str]) -> str | None:
    """The client id the request claims, from Basic auth or the form (before checking)."""
    return _requested_credentials(headers, form)[0]


def requested_client_secret(headers: Mapping[str, str], form: Mapping[str, str]) -> str | None:
    """The client secret the request presents, from Basic auth or the form."""
    return _requested_credentials(headers, form)[1]
