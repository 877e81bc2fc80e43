"""Private Citus clusters on loopback: a coordinator and workers, each a
:class:`~meridian_dev.postgres.LocalCluster` of the system's PostgreSQL started with
Citus preloaded, joined the way a production cluster is (roles, one database owned by a
non-superuser owner with the extension on every node, the workers registered on the
coordinator). The tests (``tests/fixtures/citus.py``) and the benchmark harness
(``loadtests.bench``) start theirs through :func:`start_citus`.

Citus itself comes with the system's PostgreSQL: installed from Citus's packages, or
on developers' and CI machines from the build in ``../shared/citus`` (:func:`install`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from meridian_dev.postgres import LocalCluster, LocalPgError, find_bin_dir, has_extension

OWNER_ROLE = "meridian_owner"  # owns the database, runs the migrations (no superuser)
DATABASE = "meridian_citus"
WORKERS = 2
NODE_SETTINGS = {
    "shared_preload_libraries": "citus",
    # Online shard moves and tenant isolation replicate logically.
    "wal_level": "logical",
    # PostgreSQL 15.19+ names the libraries that may decode logically; Citus's online
    # isolation (isolate_tenant_to_new_shard) decodes with its own plugin.
    "output_plugin_libraries": "pgoutput, test_decoding, citus",
    # Fewer shards per table than the default 32: a migration creates every shard of
    # every table on the workers, and a few are enough to show that a tenant's queries
    # go to one of them.
    "citus.shard_count": "8",
    # A private cluster phones nobody.
    "citus.enable_statistics_collection": "off",
}
# Starts one node: a fresh, running LocalCluster with these server settings.
StartNode = Callable[[Mapping[str, str]], LocalCluster]


@dataclass(frozen=True)
class CitusCluster:
    coordinator: LocalCluster
    workers: tuple[LocalCluster, ...]
    database: str = DATABASE
    owner: str = OWNER_ROLE

    @property
    def nodes(self) -> tuple[LocalCluster, ...]:
        return (self.coordinator, *self.workers)

    def dsn(self, user: str) -> str:
        """A SQLAlchemy URL of the database on the coordinator, the shard's address."""
        return self.coordinator.dsn(self.database, user)

    def url(self, user: str | None = None) -> str:
        """A libpq URL of the database on the coordinator (superuser by default)."""
        return self.coordinator.url(self.database, user)


def citus_installed() -> bool:
    """Whether the system's PostgreSQL has the Citus extension."""
    return has_extension(find_bin_dir(), "citus")


def install(script: Path) -> None:
    """Runs a Citus ``install`` script (as root); raises LocalPgError unless Citus is
    installed afterwards."""
    done = subprocess.run(  # noqa: S603 - a fixed path, no shell
        [str(script)], capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0 or not citus_installed():
        raise LocalPgError(
            f"{script} did not install Citus (exit {done.returncode}):\n{done.stdout}{done.stderr}"
        )


def _prepare_node(node: LocalCluster) -> None:
    node.ensure_role(OWNER_ROLE, login=True, bypass_rls=False)
    node.ensure_database(DATABASE, owner=OWNER_ROLE)
    # Superuser only; the owner then distributes its tables without more privileges.
    node.sql("CREATE EXTENSION IF NOT EXISTS citus", database=DATABASE)


def start_citus(start: StartNode, workers: int = WORKERS) -> CitusCluster:
    """Start a coordinator and ``workers`` workers (in parallel) and join them."""
    with ThreadPoolExecutor(max_workers=workers + 1) as pool:
        nodes = list(pool.map(lambda _: start(NODE_SETTINGS), range(workers + 1)))
        list(pool.map(_prepare_node, nodes))
    coordinator, *rest = nodes
    # The coordinator holds (reference) shards too, and workers reach it by this address.
    coordinator.sql(
        f"SELECT citus_set_coordinator_host('{coordinator.host}', {coordinator.port})",
        database=DATABASE,
    )
    for worker in rest:
        coordinator.sql(f"SELECT citus_add_node('{worker.host}', {worker.port})", database=DATABASE)
    return CitusCluster(coordinator, tuple(rest))
