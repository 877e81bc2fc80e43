"""All configuration: one pydantic-settings object, environment prefix ``MERIDIAN_``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from sharding.engine import ShardEngine

if TYPE_CHECKING:
    from tenancy.keyring import LocalKeyProvider


class KeyConfigError(Exception):
    """No key-encryption key is configured (or it cannot be read)."""


class DevPlatformError(Exception):
    """The ``dev.json`` named by ``MERIDIAN_DEV_JSON`` cannot be used; the message says why."""


DEV_JSON_ENV = "MERIDIAN_DEV_JSON"


def dev_platform_values(path: Path) -> dict[str, Any]:
    """Settings of a running ``meridian dev`` platform, from the ``dev.json`` it writes:
    its databases (app and owner DSNs of the control plane and every shard), Redis, KEK
    file and issuer, so every command reaches that platform."""
    try:
        data = json.loads(path.read_text())
        databases = data["databases"]
        values: dict[str, Any] = {
            "control_dsn": databases["control"],
            "control_admin_dsn": databases.get("control_admin"),
            "shards": [
                {"id": shard_id, **shard} for shard_id, shard in databases["shards"].items()
            ],
            "redis_url": data.get("redis_url"),
            "issuer": data["base_url"],
            "password_grant": True,
            # Its webhook receivers listen on this machine.
            "webhook_allow_private_targets": True,
        }
    except FileNotFoundError as exc:
        raise DevPlatformError(
            f"{path} does not exist: start the platform with `scripts/dev` (or `meridian dev`) "
            "first, or point MERIDIAN_DEV_JSON / --dev-json at its dev.json"
        ) from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DevPlatformError(
            f"{path} is not a dev.json written by this version of `meridian dev` ({exc!r}); "
            "restart `meridian dev` to rewrite it"
        ) from exc
    if data.get("kek_file"):
        values["kek_file"] = data["kek_file"]
    return values


class _DevPlatformSource(PydanticBaseSettingsSource):
    """The values of the dev.json named by MERIDIAN_DEV_JSON: below environment variables
    (so e.g. MERIDIAN_KEK_FILE still wins), above the defaults."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Unused: __call__ returns every value at once.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get(DEV_JSON_ENV)
        return dev_platform_values(Path(path)) if path else {}


class ShardConfig(BaseModel):
    """A shard declared in configuration (registered in the control plane at start-up)."""

    id: str
    region: str
    dsn: str
    admin_dsn: str | None = None
    capacity: int = 1000
    # Holds one tenant; None leaves a registered shard's flag as it is.
    dedicated: bool | None = None
    # The database engine (sharding.engine.ShardEngine); None leaves a registered shard's
    # as it is (a new one: postgres). Instances check it against the database when they
    # first read from the shard, and follow the database (logging the disagreement).
    engine: ShardEngine | None = None


class PlanLimits(BaseModel):
    """What a plan allows a tenant: requests per minute (the tenant's in all, each
    caller's) and per day, records per object, and bytes of stored files."""

    tenant_per_minute: int = Field(ge=1, le=600_000)
    caller_per_minute: int = Field(ge=1, le=600_000)
    calls_per_day: int = Field(ge=1, le=1_000_000_000)
    records_per_object: int = Field(ge=1, le=1_000_000_000)
    stored_bytes: int = Field(ge=1, le=2**50)


LIMIT_NAMES = tuple(PlanLimits.model_fields)
_GIB = 2**30


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
    # One JSON object per log line (request, trace, tenant and shard ids in each), or
    # plain text (meridian.logs).
    log_format: Literal["json", "text"] = "json"
    # Traces (meridian.telemetry): an OTLP/HTTP collector's traces URL, e.g.
    # http://otel-collector:4318/v1/traces; unset, nothing is traced. The share of
    # traces begun here that are kept (a caller's sampled traceparent is always kept).
    traces_endpoint: str | None = None
    traces_sample_ratio: float = Field(default=1.0, ge=0, le=1)
    # /metrics (meridian.metrics): how many of the busiest tenants it names, and the
    # port the worker serves its own on (unset: the worker serves none).
    metrics_top_tenants: int = Field(default=10, ge=0)
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)

    # The plans: what each allows a tenant (rate limits, meridian.web.ratelimit; quotas,
    # meridian.quotas); platform admins set a tenant's plan and override any of its
    # limits (PUT /admin/v1/tenants/{id}/limits). rate_limits: false turns the
    # per-minute and per-day request limits off.
    rate_limits: bool = True
    plans: dict[str, PlanLimits] = Field(
        default_factory=lambda: {
            "free": PlanLimits(
                tenant_per_minute=600,
                caller_per_minute=120,
                calls_per_day=20_000,
                records_per_object=10_000,
                stored_bytes=_GIB,
            ),
            "standard": PlanLimits(
                tenant_per_minute=6_000,
                caller_per_minute=1_200,
                calls_per_day=2_000_000,
                records_per_object=2_000_000,
                stored_bytes=50 * _GIB,
            ),
            "enterprise": PlanLimits(
                tenant_per_minute=60_000,
                caller_per_minute=12_000,
                calls_per_day=50_000_000,
                records_per_object=100_000_000,
                stored_bytes=1024 * _GIB,
            ),
        }
    )
    # How often each instance adds the requests it let through to the shared counts in
    # Redis (and learns the others'): the fleet may exceed a quota by what the other
    # instances admit in this time. Each sync waits at most rate_limit_timeout.
    rate_limit_sync_interval: float = Field(default=0.1, gt=0, le=10)
    rate_limit_timeout: float = Field(default=0.5, gt=0)

    # Cache: L1 is per process; L2 is Redis when redis_url is set.
    cache_l1_max_entries: int = Field(default=50_000, ge=100)
    # Per Redis read. A timeout costs a database load and a new Redis connection
    # (redis-py drops one cancelled mid-command), so it is not tight.
    cache_op_timeout: float = Field(default=0.1, gt=0)
    cache_cooldown: float = Field(default=2.0, gt=0)  # breaker open time after failures
    # Timeouts open the cache's breaker only when nothing but timeouts came back from
    # Redis for this long (a busy Redis still answers most calls); refused or broken
    # connections open it after 3 in a row, as before.
    cache_timeout_window: float = Field(default=1.0, gt=0)
    # Per-tenant state (directory entries, not-before times, actors, verified tokens,
    # enforcers, data keys) is sized to stay in memory for this many tenants per
    # process; about 1 KB per tenant plus its enforcer (~27 KB, see authz_max_tenants).
    active_tenants: int = Field(default=10_000, ge=10)
    # While the invalidation feed is live, per-tenant state read on every request
    # (directory entries, not-before times, and generations; actors: 300 s) is kept
    # this long instead of its short TTL: it changes only with an invalidation
    # (docs/architecture.md, Cache).
    tenant_state_hold: float = Field(default=300.0, gt=0)
    cache_records: bool = True  # single-record reads of contacts, accounts, opportunities
    cache_lists: bool = True  # list pages of the same kinds (5 s in process, 60 s in Redis)
    cache_record_ttl: float = Field(default=300.0, gt=0)  # L2 lifetime
    cache_record_l1_ttl: float = Field(default=30.0, gt=0)  # staleness bound without Redis

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

    # Key-encryption key of the tenants' data keys: a base64 32-byte key, or JSON
    # {"primary": id, "keys": {id: base64}} while a KEK is being rotated (docs/architecture.md).
    # Either the secret itself or a file holding it; there is no default key.
    kek: SecretStr | None = None
    kek_file: Path | None = None
    # Unwrapped data keys stay in process memory this long (never in Redis).
    keyring_ttl: float = Field(default=300.0, gt=0)
    # How long an instance trusts its list of a tenant's key versions (searches cover
    # every live version; rotation waits this long before the next step).
    key_versions_ttl: float = Field(default=5.0, gt=0)

    directory_ttl: float = Field(default=5.0, gt=0)
    # By-id reads as one statement (enter the tenant laterally, one round trip) rather
    # than BEGIN / enter / SELECT / COMMIT, on shards whose engine allows it (not Citus,
    # whose planner does not route a function scan joined laterally to a distributed
    # table: sharding.engine). Off: every shard reads by id in a transaction.
    single_statement_reads: bool = True
    # Authorization: tenant enforcers kept per process, and how long one is trusted
    # before its policy version is checked again (the bound when Redis announcements
    # cannot arrive; with Redis up, changes arrive within a second).
    # None: active_tenants. An enforcer with its memo is ~27 KB (270 MB at 10,000).
    authz_max_tenants: int | None = Field(default=None, ge=10)
    authz_policy_ttl: float = Field(default=30.0, gt=0)
    # While policy announcements arrive over Redis, an enforcer is trusted this long
    # before its version is read again (authz_policy_ttl otherwise).
    authz_policy_hold: float = Field(default=300.0, gt=0)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # The batch routes' (POST /v1/{object}/batch): up to 1,000 records of up to a few
    # KiB each (a case's description may hold 32,000 characters).
    max_batch_body_bytes: int = Field(default=8_388_608, ge=1024)
    # Connections per shard this process keeps open, in each of its two pools (the
    # ORM's for transactions, 10 more opened for a burst and closed when returned; the
    # raw read pool's): a shard serving N instances needs 2 x N x this in
    # max_connections.
    shard_pool_size: int = Field(default=10, ge=1)
    # Bulkheads (sharding.bulkhead): the transactions one tenant may have open at once on
    # its shard, in this process (None: half of shard_pool_size, at least one), so a
    # tenant's flood leaves its neighbours the other half; its excess requests wait up to
    # tenant_connections_wait seconds for one of its own to end, then get 503.
    tenant_connections: int | None = Field(default=None, ge=1)
    tenant_connections_wait: float = Field(default=0.5, gt=0)
    # Control-plane connections kept open (10 more may be opened, and are closed when
    # returned). The seeder raises it: onboarding many tenants at once would otherwise
    # open and close a connection every few statements.
    control_pool_size: int = Field(default=5, ge=1)
    shard_connect_timeout: float = Field(default=2.0, gt=0)
    shard_cooldown: float = Field(default=2.0, gt=0)
    # How long a write waits while a move fences its tenant (the switch takes well
    # under a second) before it is answered 503 + Retry-After. 0: answer at once.
    move_write_hold: float = Field(default=2.0, ge=0, le=30)
    # How often an API instance looks for tenant moves nobody drives (their driver died,
    # or a shard they need was down) and resumes them. 0: never (`meridian moves resume`).
    move_sweep_interval: float = Field(default=30.0, ge=0)
    # Events (meridian.events, meridian.worker). How often the relay looks for unpublished
    # events on each shard, how many it publishes per tenant at a time, and how many
    # entries the Redis stream keeps (a transport; the shards' outboxes are the record).
    event_relay_interval: float = Field(default=0.1, gt=0)
    event_relay_batch: int = Field(default=500, ge=1, le=10_000)
    event_stream_max: int = Field(default=200_000, ge=1_000)
    # A consumer's unacknowledged entry is taken over by another after this long, and
    # set aside (logged, acknowledged) after this many deliveries.
    event_claim_idle: float = Field(default=30.0, gt=0)
    event_max_deliveries: int = Field(default=10, ge=1)
    # Days a tenant's events are kept when its platform admin set nothing else.
    event_retention_days: int = Field(default=30, ge=1, le=3650)
    # Live streams (GET /v1/stream, meridian.events.stream): a comment this often keeps
    # proxies from closing an idle stream and shows the server a client that is gone; the
    # same beat renews the stream's lease, of which a tenant holds at most
    # stream_max_per_tenant across instances. A stream whose client falls this many
    # events behind is closed (it resumes with Last-Event-ID).
    stream_heartbeat: float = Field(default=15.0, gt=0, le=300)
    stream_max_per_tenant: int = Field(default=20, ge=1)
    stream_buffer: int = Field(default=1000, ge=10)
    # Job queue (saq on Redis): webhook deliveries and saga steps run this many at once.
    worker_concurrency: int = Field(default=20, ge=1, le=500)
    # Fulfilment sagas (meridian.fulfilment, docs/fulfilment.md): a step's call timeout
    # and attempts when its configuration names none; a failed attempt is retried by saq
    # with exponential backoff and jitter from fulfilment_retry_delay seconds up to
    # fulfilment_retry_cap. Step URLs follow webhook_allow_private_targets (below).
    fulfilment_step_timeout: float = Field(default=10.0, gt=0, le=60)
    fulfilment_step_attempts: int = Field(default=3, ge=1, le=10)
    fulfilment_retry_delay: float = Field(default=2.0, ge=0)
    fulfilment_retry_cap: float = Field(default=300.0, gt=0)
    # Webhooks (meridian.webhooks, docs/webhooks.md). A target whose host is or resolves
    # to a private, loopback, link-local or other non-global address is refused (when
    # subscribing and again before each delivery: DNS can change) unless this is on:
    # for development and tests, whose receivers listen on 127.0.0.1.
    webhook_allow_private_targets: bool = False
    # A failed delivery is retried (saq's exponential backoff with jitter, from
    # webhook_retry_base seconds up to webhook_retry_cap) until this many seconds have
    # passed since its first attempt; then it is dead (the dead-letter list).
    webhook_retry_window: float = Field(default=86_400.0, gt=0)
    webhook_retry_base: float = Field(default=10.0, gt=0)
    webhook_retry_cap: float = Field(default=3_600.0, gt=0)
    # Seconds a receiver has to answer one delivery.
    webhook_timeout: float = Field(default=10.0, gt=0, le=60)
    # A subscription is disabled after this many dead deliveries in a row.
    webhook_disable_after: int = Field(default=5, ge=1)
    # Imports and exports (meridian.transfers, docs/api.md "Imports and exports"): an
    # upload's limit (POST /v1/imports, the whole multipart body), the rows the worker
    # writes per transaction (an import's chunk, committed with its progress) and reads
    # per page (an export), how long a signed download URL works, how long files are
    # kept, and after how long without a heartbeat a job is handed to another worker.
    max_import_bytes: int = Field(default=104_857_600, ge=1024)
    import_chunk_rows: int = Field(default=500, ge=1, le=5000)
    export_page_rows: int = Field(default=500, ge=1, le=5000)
    transfer_url_ttl: int = Field(default=900, ge=10, le=7 * 86_400)
    transfer_retention_days: int = Field(default=7, ge=1, le=365)
    transfer_stale_after: float = Field(default=120.0, gt=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            _DevPlatformSource(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    @field_validator("shards", mode="before")
    @classmethod
    def _parse_shards(cls, value: object) -> object:
        # MERIDIAN_SHARDS is JSON: [{"id": "us-1", "region": "us", "dsn": "..."}, ...]
        if isinstance(value, str):
            return json.loads(value) if value.strip() else []
        return value

    @property
    def control_migrate_dsn(self) -> str:
        return self.control_admin_dsn or self.control_dsn

    def limits_of(self, plan: str, own: Mapping[str, int]) -> PlanLimits:
        """A tenant's limits: its ``own`` where an admin set them, else its ``plan``'s
        (an unknown plan has the standard one's)."""
        plans = self.plans
        by_plan = plans.get(plan) or plans.get("standard") or next(iter(plans.values()))
        return by_plan.model_copy(update={k: v for k, v in own.items() if k in LIMIT_NAMES})

    def key_provider(self) -> LocalKeyProvider:
        """The KEK provider; refuses to run without a configured key (a silent default
        key would encrypt production data under a key anyone can read in the source)."""
        from tenancy.keyring import LocalKeyProvider

        try:
            if self.kek is not None:
                return LocalKeyProvider.from_secret(self.kek.get_secret_value())
            if self.kek_file is not None:
                return LocalKeyProvider.from_file(self.kek_file)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # The message names the setting, never the key material.
            raise KeyConfigError(f"the key-encryption key cannot be loaded: {exc}") from exc
        raise KeyConfigError(
            "no key-encryption key configured: set MERIDIAN_KEK (base64 of 32 random bytes, "
            "or JSON with a primary and keys) or MERIDIAN_KEK_FILE"
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()


def use_dev_platform(dev_json: Path) -> None:
    """From now on, this process (and the processes it starts) reads its settings from a
    running ``meridian dev``'s ``dev.json``, under any ``MERIDIAN_*`` environment variables
    (reading them raises DevPlatformError when the file cannot be used)."""
    os.environ[DEV_JSON_ENV] = str(dev_json.resolve())
    get_settings.cache_clear()
