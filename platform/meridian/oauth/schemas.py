"""Response bodies of the token-revocation endpoints."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel


class TokensRevoked(BaseModel):
    tenant_id: UUID
    subject: str  # the user's id, or "*" for every token of the tenant
    not_before: datetime  # tokens issued before this are refused
    refresh_tokens_revoked: int
