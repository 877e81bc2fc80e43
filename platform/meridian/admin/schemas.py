from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, StringConstraints, model_validator

from meridian.crud.schemas import InputModel

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
Region = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,31}$")]
ShardId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


class TenantCreate(InputModel):
    slug: Slug
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    region: Region | None = None
    shard_id: ShardId | None = None
    plan: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,32}$")] = "standard"

    @model_validator(mode="after")
    def _region_or_shard(self) -> TenantCreate:
        if self.region is None and self.shard_id is None:
            raise ValueError("give a region (placement picks a shard) or a dedicated shard_id")
        return self


class TenantRead(BaseModel):
    id: UUID
    slug: str
    name: str
    region: str
    shard_id: str
    epoch: int
    status: str
    plan: str
    created_at: datetime


class ClientCredentials(BaseModel):
    client_id: str
    client_secret: str | None  # shown once; None when replayed
    scope: str


class TenantCreated(TenantRead):
    client: ClientCredentials


class ClientCreate(InputModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] = "api client"
    scope: Literal["crm:read", "crm:read crm:write"] = "crm:read crm:write"


class ShardRead(BaseModel):
    id: str
    region: str
    state: str
    capacity: int
    tenant_count: int
