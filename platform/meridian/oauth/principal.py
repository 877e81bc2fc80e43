"""The authenticated caller of a request."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

SCOPE_READ = "crm:read"
SCOPE_WRITE = "crm:write"
SCOPE_ADMIN = "platform:admin"
TENANT_SCOPES = (SCOPE_READ, SCOPE_WRITE)


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    client_id: str
    tenant_id: UUID | None  # None for platform-admin tokens
    scopes: frozenset[str]
    token_id: str
    expires_at: int
    # The seam for users and roles (a later step): who acts, and as what.
    user_id: UUID | None = None
    roles: tuple[str, ...] = ()
