"""The token and revocation endpoints, JWKS and server metadata.

Token and revocation errors use OAuth's own JSON format (RFC 6749 §5.2), which OAuth
clients expect, rather than problem+json.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from meridian.deps import RuntimeDep
from meridian.oauth import service
from meridian.oauth.server import AUTH_METHODS, SUPPORTED_SCOPES
from meridian.web.responses import json_response

router = APIRouter(tags=["oauth"])


async def _form(request: Request) -> dict[str, str] | None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return None
    return {k: v for k, v in (await request.form()).items() if isinstance(v, str)}


@router.post("/oauth/token")
async def issue_token(request: Request, rt: RuntimeDep) -> Response:
    form = await _form(request)
    if form is None:
        return service.oauth_error(
            400, "invalid_request", "The token request must be application/x-www-form-urlencoded."
        )
    return await service.token(rt, request.headers, request.query_params, form)


@router.post("/oauth/revoke")
async def revoke_token(request: Request, rt: RuntimeDep) -> Response:
    """RFC 7009. A refresh token revokes its whole session; an access token (a JWT) is
    answered 200 and lapses at its expiry (use the revoke-tokens endpoints to void
    access tokens at once)."""
    form = await _form(request)
    if form is None:
        return service.oauth_error(
            400, "invalid_request", "The request must be application/x-www-form-urlencoded."
        )
    return await service.revoke(rt, request.headers, request.query_params, form)


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
