"""``python -m loadtests.bench.bulkhead``: one tenant floods its shard, its neighbour on
the same shard reads, with the bulkheads on and off.

Two tenants share the shard ``us-1``: the neighbour with ``--contacts`` contacts, read by
id (``--victim-connections`` wrk connections), and the flooder with
``--flood-contacts``, whose ``--flood-connections`` connections ask for a page filtered
by ``contains`` (PostgreSQL scans its contacts for each: a request that holds a shard
connection long and little of the API's CPU). A Meridian server (caches off, so every
read reaches the shard; rate limits too high to refuse anything) serves both. For each
setting of ``--limits`` (the default: a tenant holds at most half of the instance's
connections to a shard; a number; off: a tenant may hold them all) the neighbour is measured
alone, then during the flood, and the flooder's answers are counted (200, and 503
``tenant-busy``). The figure is the neighbour's p99 during the flood over its p99
alone (target: within 20 %, 1.2).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
from pathlib import Path

from sqlalchemy.ext.asyncio import create_async_engine

from loadtests.bench.prepare import (
    BenchTenant,
    PgServer,
    Prepared,
    _onboard,
    _seed_contacts,
    caches,
    drop_databases,
    prepare,
    server_env,
)
from loadtests.bench.report import WrkResult
from loadtests.bench.servers import Load, Server, free_port, meridian_argv, run_wrk
from tenancy.keyring import TenantKeyring

SHARD = "us-1"
FLOOD_PATH = "/v1/contacts?limit=50&filter=title[contains]:nobody-has-this"


async def _flooder(pg: PgServer, prepared: Prepared, contacts: int) -> BenchTenant:
    """A second tenant on the neighbour's shard, with its own contacts."""
    ((tenant_id, shard_id, token),) = await _onboard(
        prepared.settings, "bench-bulk-flood", (SHARD,)
    )
    control = create_async_engine(prepared.settings.control_dsn)
    try:
        cipher = await TenantKeyring(control, prepared.settings.key_provider()).active_cipher(
            tenant_id
        )
    finally:
        await control.dispose()
    ids = await _seed_contacts(pg.raw(prepared.databases[shard_id]), tenant_id, contacts, cipher)
    return BenchTenant(tenant_id, shard_id, token, ids)


def _by_id(tenant: BenchTenant) -> list[tuple[str, str | None]]:
    return [(f"/v1/contacts/{cid}", tenant.token) for cid in tenant.contact_ids]


def _run(
    args: argparse.Namespace,
    prepared: Prepared,
    victim: BenchTenant,
    flooder: BenchTenant,
    *,
    limit: str | None,
    log_dir: Path,
) -> tuple[WrkResult, WrkResult, WrkResult]:
    env = {
        **server_env(prepared.settings),
        **caches(on=False),
    }
    if limit is not None:
        env["MERIDIAN_TENANT_CONNECTIONS"] = limit
    port = free_port()
    name = f"meridian-bulkheads-{limit or 'default'}"
    with Server(name, meridian_argv(port, 1), env, port, "/readyz", log_dir) as server:
        victim_load = Load(args.victim_connections, args.duration, args.warmup)
        alone = run_wrk(server.base_url, _by_id(victim), victim_load)
        flood_load = Load(args.flood_connections, args.duration + args.warmup + 4, 1.0)
        flooded: list[WrkResult] = []
        flood = threading.Thread(
            target=lambda: flooded.append(
                run_wrk(server.base_url, [(FLOOD_PATH, flooder.token)], flood_load)
            )
        )
        flood.start()
        try:
            during = run_wrk(server.base_url, _by_id(victim), victim_load)
        finally:
            flood.join()
    return alone, during, flooded[0]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.bulkhead")
    parser.add_argument("--pg-host", default=os.environ.get("MERIDIAN_TEST_PG_HOST", "127.0.0.1"))
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--flood-contacts", type=int, default=50_000)
    parser.add_argument("--victim-connections", type=int, default=4)
    parser.add_argument("--flood-connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--db-prefix", default="bench_bulk")
    parser.add_argument(
        "--limits",
        default="default,2,1,off",
        help="the tenant connection limits to run: default (half the pool), a number, off",
    )
    args = parser.parse_args()
    pg = PgServer(args.pg_host, args.pg_port, args.pg_user, "meridian_app")
    prepared = asyncio.run(
        prepare(pg, prefix=args.db_prefix, contacts=args.contacts, redis_url=args.redis_url)
    )
    try:
        victim = next(t for t in prepared.tenants if t.shard_id == SHARD)
        flooder = asyncio.run(_flooder(pg, prepared, args.flood_contacts))
        print(
            f"neighbour: {len(victim.contact_ids)} contacts, {args.victim_connections} "
            f"connections; flooder: {len(flooder.contact_ids)} contacts, "
            f"{args.flood_connections} connections, GET {FLOOD_PATH}"
        )
        print(
            "| connections a tenant may hold | neighbour p50 / p99 alone (ms) "
            "| during the flood (ms) | p99 during / alone | flooder req/s | flooder 503s |"
        )
        print("|---|---|---|---:|---:|---:|")
        with tempfile.TemporaryDirectory() as logs:
            for name in args.limits.split(","):
                limit = {"default": None, "off": "100000"}.get(name, name)
                alone, during, flood = _run(
                    args, prepared, victim, flooder, limit=limit, log_dir=Path(logs)
                )
                shown = {"default": "5 (default: half of 10)", "off": "all (off)"}.get(name, name)
                print(
                    f"| {shown} | {alone.p50_ms:.2f} / {alone.p99_ms:.2f} | "
                    f"{during.p50_ms:.2f} / {during.p99_ms:.2f} | "
                    f"{during.p99_ms / alone.p99_ms:.2f} | {flood.requests_per_sec:,.0f} | "
                    f"{flood.non_2xx:,} |",
                    flush=True,
                )
    finally:
        asyncio.run(drop_databases(pg, list(prepared.databases.values())))


if __name__ == "__main__":
    main()
