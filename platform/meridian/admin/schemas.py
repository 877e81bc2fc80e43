from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from meridian.crud.schemas import NOT_BLANK, Addressable, InputModel, any_present, one_present
from sharding.engine import ShardEngine
from sharding.models import MoveState
from tenancy.context import TenantStatus

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
Region = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,31}$")]
ShardId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


class TenantCreate(InputModel):
    """Placed by ``region`` (the least-loaded active shared shard there) or onto the
    shard ``shard_id`` names: a dedicated shard takes one tenant only (else 409
    ``dedicated-shard-occupied``), a shared one any number."""

    model_config = ConfigDict(
        json_schema_extra={
            **any_present("region", "shard_id"),
            "examples": [{"slug": "initech", "name": "Initech", "region": "eu"}],
        }
    )
    slug: Slug
    name: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NOT_BLANK)]
    region: Region | None = None
    shard_id: ShardId | None = None
    plan: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,32}$")] = "standard"

    @model_validator(mode="after")
    def _region_or_shard(self) -> TenantCreate:
        if self.region is None and self.shard_id is None:
            raise ValueError("give a region (placement picks a shard) or a dedicated shard_id")
        return self


class TenantRead(Addressable):
    id: UUID
    slug: str
    name: str
    region: str
    shard_id: str
    epoch: int
    status: TenantStatus
    plan: str
    event_retention_days: int | None = Field(
        description="Days the tenant's events, history and audit trail are kept; null: "
        "the platform's default."
    )
    limits: dict[str, int] = Field(
        description="The tenant's own limits, overriding its plan's (the rest are the "
        "plan's): GET /admin/v1/tenants/{id}/limits shows them all."
    )
    created_at: datetime


class TenantChange(InputModel):
    """What a platform admin may change of a tenant (fields left out stay as they are)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"event_retention_days": 90}]})
    event_retention_days: Annotated[int | None, Field(ge=1, le=3650)] = None


PerMinute = Annotated[int, Field(ge=1, le=600_000)]


class LimitsUpdate(InputModel):
    """A tenant's plan (left out: unchanged) and its own limits, which override the
    plan's (null or left out: the plan's)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"plan": "enterprise", "caller_per_minute": 30_000}]}
    )
    plan: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")] | None = None
    tenant_per_minute: PerMinute | None = Field(
        default=None, description="The tenant's requests per minute in all."
    )
    caller_per_minute: PerMinute | None = Field(
        default=None,
        description="Each caller's (a user, or a client acting for the tenant) requests per "
        "minute.",
    )
    calls_per_day: Annotated[int, Field(ge=1, le=1_000_000_000)] | None = Field(
        default=None, description="The tenant's requests in any 24 hours."
    )
    records_per_object: Annotated[int, Field(ge=1, le=1_000_000_000)] | None = Field(
        default=None,
        description="Records of each object (accounts, contacts, leads, opportunities, cases).",
    )
    stored_bytes: Annotated[int, Field(ge=1, le=2**50)] | None = Field(
        default=None, description="Bytes of the tenant's stored files (imports, exports)."
    )


class LimitsRead(BaseModel):
    tenant_id: UUID
    plan: str
    tenant_per_minute: int
    caller_per_minute: int
    calls_per_day: int
    records_per_object: int
    stored_bytes: int
    overridden: list[str] = Field(
        description="Which of them are the tenant's own rather than its plan's."
    )


class ClientCredentials(BaseModel):
    client_id: str
    client_secret: str | None  # shown once; None when replayed
    scope: str


class TenantCreated(TenantRead):
    client: ClientCredentials
    # How the shard was chosen: by region, or named (a dedicated or a shared shard).
    placement: Literal["region", "dedicated", "shard"]


class ClientCreate(InputModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NOT_BLANK)] = (
        "api client"
    )
    scope: Literal["crm:read", "crm:read crm:write"] = "crm:read crm:write"


class ShardRead(BaseModel):
    id: str
    region: str
    state: Literal["active", "closed", "offline"]
    capacity: int
    dedicated: bool  # holds one tenant; placement by region never picks it
    engine: ShardEngine  # what the shard's database runs (sharding.engine)
    tenant_count: int


class TenantIsolate(InputModel):
    """Where to move the tenant's shard group once it is alone in it (optional: without
    a node the group stays on the worker it is split on)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"node": "10.0.0.12:5432"}]})
    node: Annotated[
        str | None,
        StringConstraints(pattern=r"^([A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$"),
    ] = None


class ShardGroupRead(BaseModel):
    shard: int  # the Citus shard of tenant_residency holding the tenant (names the group)
    node: str  # host:port of the worker it lives on
    alone: bool  # the group holds this tenant only


class TenantIsolation(BaseModel):
    tenant_id: UUID
    shard_id: str
    before: ShardGroupRead
    after: ShardGroupRead
    isolated_now: bool  # false: the tenant already had a group of its own
    isolate_seconds: float
    moved_now: bool  # false: no node asked, or the group was already there
    move_seconds: float


class MoveCreate(InputModel):
    """Where to move the tenant: a shard by id, or a region (the least-loaded active
    shared shard there, as onboarding places tenants). A region change takes effect
    (the tenant's region, its residency) only when the move completes."""

    model_config = ConfigDict(
        json_schema_extra={
            **one_present("target_shard_id", "region"),
            "examples": [{"region": "eu"}, {"target_shard_id": "eu-2"}],
        }
    )
    target_shard_id: ShardId | None = None
    region: Region | None = None

    @model_validator(mode="after")
    def _shard_or_region(self) -> MoveCreate:
        if (self.target_shard_id is None) == (self.region is None):
            raise ValueError("give either a target_shard_id or a region")
        return self


class TableProgress(BaseModel):
    copied: int  # the tenant's rows on the target
    total: int  # the tenant's rows on the source


class TableVerified(BaseModel):
    rows: int
    matches: bool  # same count and same order-independent hash of the rows on both sides


class MoveTimings(BaseModel):
    """Where the write freeze went, in milliseconds."""

    fence_ms: int  # waiting for in-flight writers to finish
    fenced_catch_up_ms: int  # the target applying everything up to the fence
    verify_ms: int  # comparing counts and hashes


class MoveRead(Addressable):
    id: UUID
    tenant_id: UUID
    source_shard_id: str
    target_shard_id: str
    state: MoveState
    # Set while a move is being rolled back: the state it will end in.
    rolling_back_to: MoveState | None
    rows_copied: int
    rows_total: int
    tables: dict[str, TableProgress]
    # Bytes of WAL the target had still to apply when last measured.
    lag_bytes: int | None
    verified: dict[str, TableVerified] | None
    timings: MoveTimings | None
    fenced_at: datetime | None
    freeze_ms: int | None  # how long the tenant's writes were frozen
    deleted_from_source: dict[str, int] | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
