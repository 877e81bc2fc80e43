"""The authenticated caller of a request, and the OAuth scopes a token may carry.

A kit module: the request dependencies read it, the oauth domain issues and verifies it."""

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
    issued_at: int = 0
    # A user's token names the user; its role is read from the user record, so role
    # changes apply at once. A client's token carries the role the client acts with.
    user_id: UUID | None = None
    role: str | None = None
