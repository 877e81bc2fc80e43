"""Bodies of the token endpoint, of RFC 7009 revocation and of the emergency
revoke-tokens endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, Field


class TokensRevoked(BaseModel):
    tenant_id: UUID
    subject: str  # the user's id, or "*" for every token of the tenant
    not_before: datetime  # tokens issued before this are refused
    refresh_tokens_revoked: int


# The token and revocation endpoints read their forms themselves (Authlib does the
# protocol); these models are their OpenAPI description.
GrantType = Literal["client_credentials", "password", "refresh_token"]
Scope = Annotated[
    str,
    Field(
        pattern=r"^(crm:read|crm:write|platform:admin)( (crm:read|crm:write|platform:admin))*$",
        description="Space-separated scopes; omitted: all the client may have.",
    ),
]


class TokenRequest(BaseModel):
    """``application/x-www-form-urlencoded``. The client authenticates with HTTP Basic
    (``client_secret_basic``) or with ``client_id`` and ``client_secret`` in the form
    (``client_secret_post``)."""

    grant_type: GrantType
    scope: Scope | None = None
    client_id: str | None = None
    client_secret: str | None = None
    username: str | None = Field(None, description="password grant: the user's e-mail.")
    password: str | None = Field(None, description="password grant (first-party clients).")
    tenant: str | None = Field(None, description="password grant: the tenant's slug.")
    refresh_token: str | None = Field(None, description="refresh_token grant.")


class TokenResponse(BaseModel):
    access_token: str = Field(description="An RFC 9068 JWT; send it as a Bearer token.")
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="Seconds the access token is valid.")
    scope: str
    refresh_token: str | None = Field(
        None, description="password and refresh_token grants: single-use, rotated on use."
    )


class RevocationRequest(BaseModel):
    """RFC 7009, ``application/x-www-form-urlencoded``; the client authenticates as for
    the token endpoint."""

    token: str
    token_type_hint: Literal["refresh_token", "access_token"] | None = None
    client_id: str | None = None
    client_secret: str | None = None


class OAuthError(BaseModel):
    """RFC 6749 §5.2 (and RFC 7009 §2.2.1): the token and revocation endpoints' errors."""

    error: Literal[
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "unsupported_token_type",
    ]
    error_description: str | None = None
