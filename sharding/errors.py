"""Errors the sharding layer raises; the app maps them to HTTP problems."""

from __future__ import annotations


class ShardingError(Exception):
    pass


class UnknownShardError(ShardingError):
    def __init__(self, shard_id: str) -> None:
        super().__init__(f"shard {shard_id!r} is not in the topology")
        self.shard_id = shard_id


class ShardUnavailableError(ShardingError):
    """The shard cannot be reached now; ``retry_after`` is a hint in seconds."""

    def __init__(self, shard_id: str, retry_after: float) -> None:
        super().__init__(f"shard {shard_id!r} is unavailable")
        self.shard_id = shard_id
        self.retry_after = retry_after


class TenantBusyError(ShardingError):
    """The tenant holds all the shard connections it may (``sharding.bulkhead``) and
    none came free in time; ``retry_after`` is a hint in seconds."""

    def __init__(self, tenant_id: object, retry_after: float) -> None:
        super().__init__(f"tenant {tenant_id} has too many requests in progress")
        self.tenant_id = tenant_id
        self.retry_after = retry_after


class ResidencyError(ShardingError):
    """The shard refused to enter the tenant (SQLSTATE MR001..MR003)."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate

    @property
    def stale(self) -> bool:
        """The directory entry was stale (moved, or not resident): re-resolve and retry."""
        return self.sqlstate in {"MR001", "MR003"}

    @property
    def read_only(self) -> bool:
        """The tenant is fenced for writes (a move is finishing)."""
        return self.sqlstate == "MR002"
