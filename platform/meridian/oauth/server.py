"""Authlib's authorization server, adapted once to Starlette/FastAPI.

Authlib's server side is synchronous. Its hooks must not do I/O on the event loop, so
the token route first loads the client asynchronously, then runs Authlib's pure
protocol work (client authentication, grant validation, JWT signing) in a worker
thread with that client handed over through a context variable.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any
from urllib.parse import unquote

from authlib.oauth2 import AuthorizationServer, OAuth2Request
from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc.jwk import KeySet
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from meridian.oauth.clients import ClientRecord
from meridian.oauth.keys import ALGORITHM, KeyStore
from meridian.oauth.principal import SCOPE_ADMIN, TENANT_SCOPES

SUPPORTED_SCOPES = [*TENANT_SCOPES, SCOPE_ADMIN]
AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

_prefetched: ContextVar[ClientRecord | None] = ContextVar("oauth_prefetched", default=None)


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
        return grant_type == "client_credentials"


class _ClientCredentials(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS


class _TokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]
    def __init__(self, keys: KeyStore, issuer: str, audience: str, ttl: int) -> None:
        super().__init__(issuer=issuer, alg=ALGORITHM, expires_generator=ttl)
        self._keys = keys
        self._audience = audience

    def get_jwks(self) -> KeySet:
        # One key only: a multi-key set would sign with a random key, and a bare key
        # would lose its kid.
        return KeySet([self._keys.signing_key()])

    def get_audiences(self, client: Client, user: Any, scope: str) -> str:
        return self._audience

    def get_extra_claims(
        self, client: Client, grant_type: str, user: Any, scope: str
    ) -> dict[str, Any]:
        tenant_id = client.record.tenant_id
        return {"tenant_id": str(tenant_id)} if tenant_id is not None else {}


class MeridianAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, keys: KeyStore, *, issuer: str, audience: str, ttl: int) -> None:
        super().__init__(scopes_supported=SUPPORTED_SCOPES)
        self.issuer = issuer
        self.register_grant(_ClientCredentials)
        self.register_token_generator("default", _TokenGenerator(keys, issuer, audience, ttl))

    def query_client(self, client_id: str) -> Client | None:
        record = _prefetched.get()
        if record is None or record.client_id != client_id or record.revoked:
            # Unknown and revoked clients fail like a wrong secret (401 invalid_client,
            # same text): a distinct answer would tell which client ids exist.
            record = ClientRecord(client_id, secret_hash="", tenant_id=None, scope="", revoked=True)
        return Client(record)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        # JWT access tokens are self-contained; nothing to store for client_credentials.
        return None

    def create_oauth2_request(self, request: StarletteOAuth2Request) -> StarletteOAuth2Request:
        return request

    def handle_response(
        self, status: int, body: Any, headers: list[tuple[str, str]]
    ) -> JSONResponse:
        return JSONResponse(body, status_code=status, headers=dict(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    async def token_response(
        self, request: StarletteOAuth2Request, client: ClientRecord | None
    ) -> JSONResponse:
        def run() -> JSONResponse:
            reset = _prefetched.set(client)
            try:
                response: JSONResponse = self.create_token_response(request)
                return response
            finally:
                _prefetched.reset(reset)

        return await run_in_threadpool(run)


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
