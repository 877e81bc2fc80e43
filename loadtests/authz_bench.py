"""Authorization figures: Casbin decisions per second warm (memo hit) and without the
memo, cold tenant loads (enforcer build alone and a full load from the control plane),
and what the ``RequireTenant`` dependency costs per request end to end.

    .venv/bin/python -m loadtests.authz_bench [--tenants 200] [--pg-host ...]

It creates (and drops) its own databases on the local PostgreSQL, migrated like
``meridian migrate``, and runs the real app in process. Prints a Markdown table; all
numbers come from one run on this machine (one core: nothing here is parallel).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from sqlalchemy import insert
from starlette.requests import Request

from authz import store as policy_store
from authz.enforcer import EnforcerRegistry, TenantPolicy
from authz.policy import CATALOGUE, TEMPLATES
from loadtests.bench.prepare import (
    ISSUER,
    PgServer,
    bench_settings,
    database_names,
    drop_databases,
    ensure_app_role,
    recreate_databases,
)
from meridian.app import create_app
from meridian.deps import RequireTenant, authenticate
from meridian.operations import create_admin_client, migrate_all
from tenancy.models import Tenant

PERMISSIONS = sorted((o, a) for o, acts in CATALOGUE.items() for a in acts)
REQUESTS = [(role, o, a) for role in TEMPLATES for o, a in PERMISSIONS]


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}"


def per_op_us(n: int, seconds: float) -> str:
    return f"{seconds / n * 1e6:.2f}"


def sync_loop(n: int, op: Callable[[int], object]) -> float:
    started = time.perf_counter()
    for i in range(n):
        op(i)
    return time.perf_counter() - started


async def async_samples(n: int, op: Callable[[], Awaitable[object]]) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await op()
        samples.append((time.perf_counter() - t0) * 1e6)
    return samples


def p50_p99(samples: list[float]) -> tuple[float, float]:
    samples.sort()
    return statistics.median(samples), samples[max(0, int(len(samples) * 0.99) - 1)]


async def tenant_rows(control: Any, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    async with control.begin() as conn:
        await conn.execute(
            insert(Tenant),
            [
                {
                    "id": t,
                    "slug": f"authz-bench-{t.hex[:12]}",
                    "name": "authz bench",
                    "region": "us",
                    "status": "active",
                }
                for t in ids
            ],
        )
        # Every tenant has a custom role and an override, as a tenant in use would.
        for t in ids:
            await policy_store.lock_policy(conn, t)
            await policy_store.put_role(conn, t, "senior_rep", "custom")
            await policy_store.set_permissions(conn, t, "senior_rep", [("roles", "read")])
            await policy_store.set_parent(conn, t, "senior_rep", "sales_rep")
            await policy_store.put_role(conn, t, "read_only", "override")
            await policy_store.set_permissions(
                conn, t, "read_only", [("accounts", "read"), ("contacts", "read")]
            )
            await policy_store.bump_version(conn, t)
    return ids


def request_for(app: Any, path: str, token: str) -> Request:
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
        "app": app,
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
    }
    return Request(scope)


async def run(args: argparse.Namespace) -> list[str]:
    pg = PgServer(args.pg_host, args.pg_port, args.pg_user, args.app_role)
    names = database_names(args.db_prefix)
    await ensure_app_role(pg)
    await recreate_databases(pg, list(names.values()))
    rows: list[str] = []
    try:
        settings = bench_settings(pg, names, redis_url=args.redis)
        await migrate_all(settings)
        admin = await create_admin_client(settings, "authz bench admin")
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            runtime = app.state.runtime
            tenants = await tenant_rows(runtime.control, args.tenants)

            # -- decisions on one loaded tenant policy ------------------------------------
            registry = EnforcerRegistry(runtime.policies, max_tenants=args.tenants * 2)
            policy = await registry.get(tenants[0])
            for role, obj, act in REQUESTS:
                policy.allows(role, obj, act)  # fill the memo
            n = len(REQUESTS)
            hits = 200 * n
            warm = sync_loop(hits, lambda i: policy.allows(*REQUESTS[i % n]))
            rows.append(
                f"| warm decision (memo hit) | {rate(hits, warm)} | {per_op_us(hits, warm)} |"
            )
            misses = 2 * n
            nomemo = sync_loop(misses, lambda i: policy.enforce_uncached(*REQUESTS[i % n]))
            rows.append(
                f"| warm enforcer, no memo (pycasbin enforce, {len(policy.snapshot.rules)} rules)"
                f" | {rate(misses, nomemo)} | {per_op_us(misses, nomemo)} |"
            )

            # -- cold: a tenant's first request on this instance ---------------------------
            snapshot = policy.snapshot
            builds = 300
            build = sync_loop(builds, lambda i: TenantPolicy(snapshot, float("inf")))
            rows.append(
                f"| cold: enforcer build from a loaded snapshot | {rate(builds, build)} loads/s"
                f" | {per_op_us(builds, build)} |"
            )
            cold_registry = EnforcerRegistry(runtime.policies, max_tenants=args.tenants * 2)
            started = time.perf_counter()
            for t in tenants:
                p = await cold_registry.get(t)
                p.allows("sales_rep", "contacts", "read")
            cold = time.perf_counter() - started
            rows.append(
                f"| cold: load from the control plane + build + first decision"
                f" ({args.tenants} tenants) | {rate(args.tenants, cold)} loads/s"
                f" | {per_op_us(args.tenants, cold)} |"
            )
            clock_now = [time.monotonic()]
            ttl_registry = EnforcerRegistry(runtime.policies, ttl=1.0, clock=lambda: clock_now[0])
            await ttl_registry.get(tenants[0])

            async def revalidate() -> None:
                clock_now[0] += 2.0  # expired: one version read, same enforcer kept
                await ttl_registry.get(tenants[0])

            reval = await async_samples(200, revalidate)
            rows.append(
                f"| TTL revalidation (version read, enforcer kept), p50 | "
                f"{1e6 / p50_p99(reval)[0]:,.0f} | {p50_p99(reval)[0]:.2f} |"
            )

            # -- the dependency, end to end ------------------------------------------------
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
                admin_token = (
                    await client.post(
                        "/oauth/token",
                        data={"grant_type": "client_credentials"},
                        auth=(admin.client_id, admin.client_secret),
                    )
                ).json()["access_token"]
                made = await client.post(
                    "/admin/v1/tenants",
                    json={
                        "slug": f"authz-dep-{uuid.uuid4().hex[:8]}",
                        "name": "dep",
                        "region": "us",
                    },
                    headers={"Authorization": f"Bearer {admin_token}"},
                )
                made.raise_for_status()
                cred = made.json()["client"]
                token = (
                    await client.post(
                        "/oauth/token",
                        data={"grant_type": "client_credentials"},
                        auth=(cred["client_id"], cred["client_secret"]),
                    )
                ).json()["access_token"]
                tenant_id = uuid.UUID(made.json()["id"])
            request = request_for(app, "/v1/contacts", token)
            dependency = RequireTenant("contacts", "read")
            await dependency(request)  # token verified, tenant and policy loaded
            deps = await async_samples(args.calls, lambda: dependency(request))
            auth_only = await async_samples(args.calls, lambda: authenticate(request))
            d50, d99 = p50_p99(deps)
            a50, a99 = p50_p99(auth_only)
            rows.append(
                f"| RequireTenant('contacts', 'read') end to end (warm), p50 / p99 µs"
                f" | {1e6 / d50:,.0f} | {d50:.1f} / {d99:.1f} |"
            )
            rows.append(
                f"| of which authenticate() (cached token + revocation check), p50 / p99 µs"
                f" | {1e6 / a50:,.0f} | {a50:.1f} / {a99:.1f} |"
            )
            live = runtime.authz

            def authz_slice(i: int) -> None:
                cached = live.cached(tenant_id)
                assert cached is not None
                cached.allows("admin", "contacts", "read")

            slice_n = 200_000
            sliced = sync_loop(slice_n, authz_slice)
            rows.append(
                f"| of which the capability check (registry look-up + memo hit)"
                f" | {rate(slice_n, sliced)} | {per_op_us(slice_n, sliced)} |"
            )
    finally:
        if not args.keep_databases:
            await drop_databases(pg, list(names.values()))
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--tenants", type=int, default=200, help="tenants loaded cold")
    p.add_argument("--calls", type=int, default=20_000, help="dependency calls measured")
    p.add_argument("--db-prefix", default="authzbench")
    p.add_argument("--keep-databases", action="store_true")
    p.add_argument("--pg-host", default=os.environ.get("MERIDIAN_TEST_PG_HOST", "127.0.0.1"))
    p.add_argument(
        "--pg-port", type=int, default=int(os.environ.get("MERIDIAN_TEST_PG_PORT", "5432"))
    )
    p.add_argument("--pg-user", default=os.environ.get("MERIDIAN_TEST_PG_USER", "postgres"))
    p.add_argument("--app-role", default="meridian_app")
    p.add_argument("--redis", default=os.environ.get("MERIDIAN_TEST_REDIS_URL"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = asyncio.run(run(args))
    print("| what | per second (one core) | µs each |")
    print("|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
