"""Shared by the primitives' tests: a clock tests move by hand, a Redis Cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.redis_servers import RedisClusterServers


class Clock:
    """A settable monotonic clock: lifetimes and cooldowns tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(Path(tmp_path_factory.mktemp("redis-cluster")))
    servers.start(masters=3)
    yield servers
    servers.stop()
