"""The Citus cases: Meridian's uncached by-id read, first page of 50 and contact creation
for a tenant on a Citus shard (a coordinator and two workers), each beside the same case
for a tenant on a plain PostgreSQL shard, measured in turn on one Meridian server (record
and list caches off), so the ratio Citus / plain is what the shard's engine costs.

The cluster is private to the run: three clusters of the system's PostgreSQL (Citus
preloaded) on free loopback ports, started and joined by ``meridian_dev.citus`` as the
tests' is, registered as shard ``citus-1`` the way ``meridian shards add --engine citus``
does, and removed at the end. The cases run when ``--cases`` names ``citus`` or, by
default, when Citus is installed; otherwise the run says why they did not.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import create_async_engine

from loadtests.bench.prepare import BenchTenant, Prepared, _onboard, _seed_contacts
from loadtests.bench.report import Case, Ratio
from meridian.operations import add_shard
from meridian.settings import Settings, ShardConfig
from meridian_dev.citus import CitusCluster, citus_installed, start_citus
from meridian_dev.postgres import LocalCluster, LocalPgError, find_bin_dir, free_port
from tenancy.keyring import TenantKeyring

KEY = "citus"  # in --cases: every case below
CITUS_SHARD = "citus-1"
CITUS_REGION = "ci"  # a region of its own: region placement never picks it
PLAIN_SHARD = "us-1"  # the plain shard its cases are compared with
# What POST /v1/contacts sends: no email, so no duplicate check refuses a repeat.
CREATE_BODY = '{"first_name": "Bench", "last_name": "Create", "title": "Buyer"}'

CASES = [
    Case("plain_get", "`GET /v1/contacts/{id}`, cache off, plain shard", "Meridian"),
    Case("citus_get", "`GET /v1/contacts/{id}`, cache off, Citus shard", "Meridian"),
    Case("plain_list", "`GET /v1/contacts?limit=50`, list cache off, plain shard", "Meridian"),
    Case("citus_list", "`GET /v1/contacts?limit=50`, list cache off, Citus shard", "Meridian"),
    Case("plain_create", "`POST /v1/contacts`, plain shard", "Meridian"),
    Case("citus_create", "`POST /v1/contacts`, Citus shard", "Meridian"),
]
RATIOS = [
    Ratio("Citus / plain shard, uncached GET (req/s)", "citus_get", "plain_get", "rps"),
    Ratio("Citus / plain shard, uncached GET p50", "citus_get", "plain_get", "p50"),
    Ratio("Citus / plain shard, list of 50 (req/s)", "citus_list", "plain_list", "rps"),
    Ratio("Citus / plain shard, list of 50 p50", "citus_list", "plain_list", "p50"),
    Ratio("Citus / plain shard, create (req/s)", "citus_create", "plain_create", "rps"),
    Ratio("Citus / plain shard, create p50", "citus_create", "plain_create", "p50"),
]


def unavailable() -> str | None:
    """Why the Citus cases cannot run on this machine (None: they can)."""
    try:
        if citus_installed():
            return None
        where = find_bin_dir()
    except LocalPgError as exc:
        return str(exc)
    return (
        f"Citus is not installed in the PostgreSQL of {where}: install Citus's packages for "
        "this PostgreSQL (on CI and developers' machines: ../shared/citus/install, as root)"
    )


@contextlib.contextmanager
def private_cluster(app_role: str) -> Iterator[CitusCluster]:
    """A coordinator and two workers on free loopback ports, each with the app role;
    stopped and deleted on exit."""
    started: list[LocalCluster] = []

    def start(settings: Mapping[str, str]) -> LocalCluster:
        # Straight under the temp dir: as root the server runs as `postgres`, which must
        # be able to reach the folder. fsync stays on, as on the plain shard's server:
        # the create case compares commits that reach the disk on both.
        root = Path(tempfile.mkdtemp(prefix="meridian-bench-citus-"))
        node = LocalCluster(root, port=free_port(), settings=dict(settings))
        started.append(node)
        node.initdb()
        node.start()
        node.ensure_role(app_role, login=True, bypass_rls=False)
        return node

    try:
        yield start_citus(start)
    finally:
        for node in reversed(started):
            with contextlib.suppress(LocalPgError):  # best effort: remove the rest anyway
                node.stop("immediate")
            shutil.rmtree(node.root, ignore_errors=True)


@dataclass(frozen=True)
class CitusSetup:
    settings: Settings  # the benchmark platform's, with the Citus shard added
    tenant: BenchTenant  # on the Citus shard
    cluster: CitusCluster
    version: str  # the Citus extension's


def with_citus_shard(settings: Settings, cluster: CitusCluster) -> Settings:
    shard = ShardConfig(
        id=CITUS_SHARD,
        region=CITUS_REGION,
        dsn=cluster.dsn(settings.app_db_role),
        admin_dsn=cluster.dsn(cluster.owner),
        engine="citus",
    )
    return settings.model_copy(update={"shards": [*settings.shards, shard]})


async def add_citus_tenant(
    prepared: Prepared, cluster: CitusCluster, *, prefix: str, contacts: int
) -> CitusSetup:
    """The cluster registered as a shard of the benchmark's platform (migrated by its
    non-superuser owner), one tenant onboarded on it and its contacts seeded, as on the
    plain shards."""
    settings = with_citus_shard(prepared.settings, cluster)
    await add_shard(
        settings,
        shard_id=CITUS_SHARD,
        region=CITUS_REGION,
        dsn=cluster.dsn(settings.app_db_role),
        admin_dsn=cluster.dsn(cluster.owner),
        capacity=100,
        engine="citus",
    )
    ((tenant_id, shard_id, token),) = await _onboard(settings, f"{prefix}-c", [CITUS_SHARD])
    control = create_async_engine(settings.control_dsn)
    try:
        cipher = await TenantKeyring(control, settings.key_provider()).active_cipher(tenant_id)
    finally:
        await control.dispose()
    # As the superuser: COPY into a distributed table under forced RLS is refused.
    ids = await _seed_contacts(cluster.url(), tenant_id, contacts, cipher)
    tenant = BenchTenant(tenant_id, shard_id, token, ids)
    return CitusSetup(settings, tenant, cluster, await asyncio.to_thread(citus_version, cluster))


def plain_tenant(prepared: Prepared) -> BenchTenant:
    return next(t for t in prepared.tenants if t.shard_id == PLAIN_SHARD)


def by_id_requests(tenant: BenchTenant) -> list[tuple[str, str | None]]:
    return [(f"/v1/contacts/{cid}", tenant.token) for cid in tenant.contact_ids]


def citus_version(cluster: CitusCluster) -> str:
    return cluster.coordinator.sql(
        "SELECT extversion FROM pg_extension WHERE extname = 'citus'", cluster.database
    )
