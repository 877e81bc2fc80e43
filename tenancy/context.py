"""The frozen tenant context every request and job carries explicitly."""

from __future__ import annotations

import enum
from contextvars import ContextVar
from dataclasses import dataclass
from uuid import UUID


class TenantStatus(enum.StrEnum):
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class TenantContext:
    """Where a tenant lives and whether it may be served.

    ``epoch`` is the directory generation; the shard refuses a transaction whose epoch
    does not match its residency row (a stale directory entry after a move). ``plan``
    and ``limits`` (the tenant's own limits by name, overriding its plan's) are what the
    API's rate limits and quotas need, read with the rest.
    """

    tenant_id: UUID
    slug: str
    shard_id: str
    region: str
    status: TenantStatus
    epoch: int
    plan: str = "standard"
    limits: tuple[tuple[str, int], ...] = ()


# For logs and traces only: queries always take the context as an argument.
current_tenant_id: ContextVar[UUID | None] = ContextVar("current_tenant_id", default=None)
