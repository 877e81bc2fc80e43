"""The token endpoint, JWKS and server metadata.

Token errors use OAuth's own JSON format (RFC 6749 §5.2), which OAuth clients expect,
rather than problem+json.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from meridian.deps import RuntimeDep
from meridian.oauth.clients import find_client
from meridian.oauth.server import (
    AUTH_METHODS,
    SUPPORTED_SCOPES,
    StarletteOAuth2Request,
    requested_client_id,
    requested_client_secret,
)
from meridian.web.responses import json_response
from tenancy.context import TenantStatus

router = APIRouter(tags=["oauth"])
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(status: int, error: str, description: str) -> Response:
    return json_response({"error": error, "error_description": description}, status, _NO_STORE)


@router.post("/oauth/token")
async def issue_token(request: Request, rt: RuntimeDep) -> Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return _oauth_error(
            400, "invalid_request", "The token request must be application/x-www-form-urlencoded."
        )
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    client_id = requested_client_id(request.headers, form)
    client = None
    if client_id:
        async with rt.control.connect() as conn:
            client = await find_client(conn, client_id)
    # Only a caller holding the secret learns the tenant's state; anyone else gets the
    # usual invalid_client from the authorization server below.
    secret = requested_client_secret(request.headers, form)
    if client is not None and client.tenant_id is not None and client.secret_matches(secret or ""):
        tenant = await rt.directory.resolve(client.tenant_id)
        if tenant is None or tenant.status is not TenantStatus.ACTIVE:
            state = tenant.status.value if tenant else "deleted"
            return _oauth_error(400, "unauthorized_client", f"The client's tenant is {state}.")
    oauth_request = StarletteOAuth2Request(
        "POST",
        rt.settings.issuer.rstrip("/") + "/oauth/token",
        request.headers,
        request.query_params,
        form,
    )
    return await rt.oauth.token_response(oauth_request, client)


@router.get("/.well-known/jwks.json")
async def jwks(rt: RuntimeDep) -> Response:
    return json_response(rt.keys.jwks(), headers={"Cache-Control": "public, max-age=300"})


@router.get("/.well-known/oauth-authorization-server")
async def authorization_server_metadata(rt: RuntimeDep) -> Response:
    issuer = rt.settings.issuer.rstrip("/")
    metadata: dict[str, Any] = {
        "issuer": issuer,
        "token_endpoint": f"{issuer}/oauth/token",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "scopes_supported": SUPPORTED_SCOPES,
        "response_types_supported": [],
    }
    return json_response(metadata)
