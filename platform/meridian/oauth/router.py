"""The token and revocation endpoints, JWKS and server metadata.

Token and revocation errors use OAuth's own JSON format (RFC 6749 §5.2), which OAuth
clients expect, rather than problem+json.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from meridian.crud.schemas import without_null
from meridian.deps import RuntimeDep
from meridian.oauth import service
from meridian.oauth.schemas import OAuthError, RevocationRequest, TokenRequest, TokenResponse
from meridian.oauth.server import AUTH_METHODS, SUPPORTED_SCOPES
from meridian.runtime import Runtime
from meridian.web.responses import json_response


def _token_deps(rt: Runtime) -> service.TokenDeps:
    """The collaborators of the token and revocation endpoints, out of the runtime."""
    return service.TokenDeps(
        control=rt.control,
        directory=rt.directory,
        router=rt.router,
        refresh_tenant=rt.refresh_tenant,
        revocations=rt.revocations,
        server=rt.oauth,
        issuer=rt.settings.issuer,
        refresh_token_ttl=rt.settings.refresh_token_ttl,
    )


router = APIRouter(tags=["oauth"])
FORM = "application/x-www-form-urlencoded"
NO_STORE_HEADERS = {
    "Cache-Control": {"description": "no-store", "schema": {"type": "string"}},
    "Pragma": {"description": "no-cache", "schema": {"type": "string"}},
}


def _form_body(model: type[TokenRequest] | type[RevocationRequest]) -> dict[str, Any]:
    """The form the route reads itself, described for the OpenAPI document (a field is
    absent or a string: a form has no null)."""
    schema = model.model_json_schema()
    for field in schema["properties"].values():
        without_null(field)
    return {"requestBody": {"required": True, "content": {FORM: {"schema": schema}}}}


# invalid_client is 401 with a Basic challenge (RFC 6749 §5.2; Authlib sends it).
BASIC_CHALLENGE = {
    "WWW-Authenticate": {
        "description": 'The Basic challenge, e.g. Basic error="invalid_client".',
        "schema": {"type": "string", "pattern": "^Basic"},
    }
}


def _oauth_errors(**descriptions: str) -> dict[int | str, dict[str, Any]]:
    return {
        int(status.removeprefix("s")): {
            "model": OAuthError,
            "description": description,
            "headers": {**NO_STORE_HEADERS, **(BASIC_CHALLENGE if status == "s401" else {})},
        }
        for status, description in descriptions.items()
    }


async def _form(request: Request) -> dict[str, str] | None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return None
    return {k: v for k, v in (await request.form()).items() if isinstance(v, str)}


@router.post(
    "/oauth/token",
    response_model=TokenResponse,
    responses={
        200: {"headers": NO_STORE_HEADERS},
        **_oauth_errors(
            s400="invalid_request (e.g. not a form), invalid_grant, unauthorized_client "
            "(the tenant is suspended), unsupported_grant_type, invalid_scope",
            s401="invalid_client: unknown client or wrong secret",
        ),
    },
    openapi_extra=_form_body(TokenRequest),
)
async def issue_token(request: Request, rt: RuntimeDep) -> Response:
    """OAuth 2.0 token endpoint: client credentials, the first-party password grant
    (when enabled) and refresh tokens."""
    form = await _form(request)
    if form is None:
        return service.oauth_error(
            400, "invalid_request", "The token request must be application/x-www-form-urlencoded."
        )
    return await service.token(_token_deps(rt), request.headers, request.query_params, form)


@router.post(
    "/oauth/revoke",
    responses={
        200: {
            "description": "Revoked, or not a token of this client's to revoke (RFC 7009 §2.2).",
            "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
        },
        **_oauth_errors(
            s400="invalid_request, invalid_grant (another client's refresh token), "
            "unsupported_token_type",
            s401="invalid_client: unknown client or wrong secret",
        ),
    },
    openapi_extra=_form_body(RevocationRequest),
)
async def revoke_token(request: Request, rt: RuntimeDep) -> Response:
    """RFC 7009. A refresh token revokes its whole session; an access token (a JWT) is
    answered 200 and lapses at its expiry (use the revoke-tokens endpoints to void
    access tokens at once)."""
    form = await _form(request)
    if form is None:
        return service.oauth_error(
            400, "invalid_request", "The request must be application/x-www-form-urlencoded."
        )
    return await service.revoke(_token_deps(rt), request.headers, request.query_params, form)


@router.get("/.well-known/jwks.json")
async def jwks(rt: RuntimeDep) -> Response:
    max_age = rt.settings.jwks_max_age
    return json_response(rt.keys.jwks(), headers={"Cache-Control": f"public, max-age={max_age}"})


@router.get("/.well-known/oauth-authorization-server")
async def authorization_server_metadata(rt: RuntimeDep) -> Response:
    issuer = rt.settings.issuer.rstrip("/")
    metadata: dict[str, Any] = {
        "issuer": issuer,
        "token_endpoint": f"{issuer}/oauth/token",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "grant_types_supported": rt.oauth.grant_types,
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "scopes_supported": SUPPORTED_SCOPES,
        # No authorization endpoint (no code flow yet), hence no response types and no
        # code_challenge_methods_supported.
        "response_types_supported": [],
    }
    return json_response(metadata)
