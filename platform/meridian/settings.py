"""All configuration: one pydantic-settings object, environment prefix ``MERIDIAN_``."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ShardConfig(BaseModel):
    """A shard declared in configuration (registered in the control plane at start-up)."""

    id: str
    region: str
    dsn: str
    admin_dsn: str | None = None
    capacity: int = 1000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MERIDIAN_", extra="ignore")

    # Control-plane database: the app role's DSN and the owner's (for migrations).
    control_dsn: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/meridian_control"
    control_admin_dsn: str | None = None
    # Shards to register at start-up; more can be added with `meridian shards add`.
    shards: Annotated[list[ShardConfig], NoDecode] = Field(default_factory=list)
    # The unprivileged role the API uses on shards; migrations grant it DML only.
    app_db_role: str = "meridian_app"
    redis_url: str | None = None
    redis_cluster: bool = False  # redis_url names a node of a Redis Cluster

    # Cache: L1 is per process; L2 is Redis when redis_url is set.
    cache_l1_max_entries: int = Field(default=50_000, ge=100)
    cache_op_timeout: float = Field(default=0.05, gt=0)  # per Redis operation
    cache_cooldown: float = Field(default=2.0, gt=0)  # breaker open time after failures
    cache_records: bool = True  # single-record reads of contacts, accounts, opportunities
    cache_lists: bool = True  # list pages of the same kinds (5 s in process, 60 s in Redis)
    cache_record_ttl: float = Field(default=300.0, gt=0)  # L2 lifetime
    cache_record_l1_ttl: float = Field(default=10.0, gt=0)  # staleness bound without Redis

    issuer: str = "http://127.0.0.1:8000"
    audience: str = "meridian-api"
    access_token_ttl: int = Field(default=900, ge=60, le=86_400)
    # First-party login with email and password (RFC 6749 §4.3). RFC 9700 §2.4 says the
    # password grant MUST NOT be used; it is here for our own apps only, off by default.
    password_grant: bool = False
    # Refresh tokens (issued with the password grant) expire this long after they were
    # issued; every use rotates them, so an active session keeps going.
    refresh_token_ttl: int = Field(default=30 * 86_400, ge=60)
    # How long clients may cache the JWKS; also how long a `next` key must have been
    # published before it may sign, so no verifier meets a kid it has not seen.
    jwks_max_age: int = Field(default=300, ge=0)
    # How often each instance re-reads the signing keys (and on any unknown kid).
    key_refresh_interval: float = Field(default=30.0, gt=0)

    directory_ttl: float = Field(default=5.0, gt=0)
    # Authorization: tenant enforcers kept per process, and how long one is trusted
    # before its policy version is checked again (the bound when Redis announcements
    # cannot arrive; with Redis up, changes arrive within a second).
    authz_max_tenants: int = Field(default=2000, ge=10)
    authz_policy_ttl: float = Field(default=30.0, gt=0)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    shard_pool_size: int = Field(default=10, ge=1)
    shard_connect_timeout: float = Field(default=2.0, gt=0)
    shard_cooldown: float = Field(default=2.0, gt=0)

    @field_validator("shards", mode="before")
    @classmethod
    def _parse_shards(cls, value: object) -> object:
        # MERIDIAN_SHARDS is JSON: [{"id": "us-1", "region": "us", "dsn": "..."}, ...]
        if isinstance(value, str):
            import json

            return json.loads(value) if value.strip() else []
        return value

    @property
    def control_migrate_dsn(self) -> str:
        return self.control_admin_dsn or self.control_dsn


@lru_cache
def get_settings() -> Settings:
    return Settings()
