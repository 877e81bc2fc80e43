"""Token figures: bearer validation per call, cached (L1 hit) and uncached (joserfc
signature check + claims), the per-request not-before look-up, and the token endpoint's
latency over HTTP (client_credentials; password and refresh grants when offered).

    .venv/bin/python -m loadtests.token_bench [--base-url URL --client-id ID
        --client-secret SECRET --tenant-slug SLUG --control-dsn DSN --redis URL] [-n 5000]

Defaults come from ``.meridian/dev.json`` (written by ``meridian dev``). Prints Markdown
tables; every number comes from one run on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import create_async_engine

from cache.core import TwoLevelCache
from cache.metrics import CacheMetrics
from meridian.oauth.keys import KeyStore
from meridian.oauth.notbefore import NotBeforeStore
from meridian.oauth.verifier import TokenVerifier


async def timed(n: int, op: Callable[[], Awaitable[object]]) -> list[float]:
    """Per-call wall time in µs."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await op()
        samples.append((time.perf_counter() - t0) * 1e6)
    return samples


def row(name: str, samples: list[float], unit: str = "µs") -> str:
    samples = sorted(samples)
    p50 = statistics.median(samples)
    p99 = samples[max(0, int(len(samples) * 0.99) - 1)]
    scale = 1000.0 if unit == "ms" else 1.0
    return f"| {name} | {len(samples)} | {p50 / scale:.1f} {unit} | {p99 / scale:.1f} {unit} |"


async def token(http: httpx.AsyncClient, client_id: str, secret: str) -> dict[str, Any]:
    resp = await http.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


async def run(args: argparse.Namespace) -> list[str]:
    rows: list[str] = []
    async with httpx.AsyncClient(base_url=args.base_url, timeout=10) as http:
        body = await token(http, args.client_id, args.client_secret)
        access_token: str = body["access_token"]
        for _ in range(20):  # warm-up: connection, code paths
            await token(http, args.client_id, args.client_secret)
        endpoint = await timed(args.n_http, lambda: token(http, args.client_id, args.client_secret))
        sign_in_rows = await user_grants(http, args, access_token)

    control = create_async_engine(args.control_dsn, pool_size=1)
    redis = Redis.from_url(args.redis) if args.redis else None
    cache = TwoLevelCache(redis, metrics=CacheMetrics(CollectorRegistry()))
    try:
        keys = KeyStore(control, token_ttl=900)
        await keys.refresh()
        verifier = TokenVerifier(keys, issuer=args.issuer, audience=args.audience)
        principal = await verifier.verify(access_token)
        cached = await timed(args.n, lambda: verifier.verify(access_token))

        async def uncached() -> object:
            verifier.forget()  # a dict clear: well under a microsecond
            return await verifier.verify(access_token)

        cold = await timed(args.n, uncached)

        revocations = NotBeforeStore(control, cache)
        assert principal.tenant_id is not None, "use a tenant client"
        tenant_id = principal.tenant_id
        await revocations.not_before(tenant_id, None)
        nbf_hit = await timed(args.n, lambda: revocations.not_before(tenant_id, None))
        # A user never seen before: generation, L1 and L2 miss, one control-plane query.
        nbf_miss = await timed(
            min(args.n, 500), lambda: revocations.not_before(tenant_id, uuid.uuid4())
        )
    finally:
        await cache.close()
        if redis is not None:
            await redis.aclose()
        await control.dispose()

    rows.append(row("bearer validation, cached (L1 hit)", cached))
    rows.append(row("bearer validation, uncached (RS256 verify + claims)", cold))
    rows.append(row("not-before check, L1 hit (every request)", nbf_hit))
    rows.append(row("not-before check, miss (Redis + control-plane query)", nbf_miss))
    rows.append(row("token endpoint, client_credentials (HTTP round trip)", endpoint, "ms"))
    return rows + sign_in_rows


BENCH_EMAIL = "token-bench@example.com"
BENCH_PASSWORD = "token-bench-password"  # noqa: S105 - a read-only user of a test tenant


async def user_grants(
    http: httpx.AsyncClient, args: argparse.Namespace, client_token: str
) -> list[str]:
    """Password and refresh grants, when the server offers them and the tenant's slug is
    known: a read-only bench user is created (or reused) through the users API."""
    meta = (await http.get("/.well-known/oauth-authorization-server")).json()
    if "password" not in meta.get("grant_types_supported", []) or not args.tenant_slug:
        return []
    made = await http.post(
        "/v1/users",
        json={
            "email": BENCH_EMAIL,
            "name": "Token bench",
            "role": "read_only",
            "password": BENCH_PASSWORD,
        },
        headers={"Authorization": f"Bearer {client_token}"},
    )
    if made.status_code not in (201, 409):
        made.raise_for_status()
    auth = (args.client_id, args.client_secret)
    form = {
        "grant_type": "password",
        "username": BENCH_EMAIL,
        "password": BENCH_PASSWORD,
        "tenant": args.tenant_slug,
    }
    refresh_token = ""

    async def sign_in() -> None:
        nonlocal refresh_token
        resp = await http.post("/oauth/token", data=form, auth=auth)
        resp.raise_for_status()
        refresh_token = resp.json()["refresh_token"]

    async def refresh() -> None:
        nonlocal refresh_token
        resp = await http.post(
            "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
            auth=auth,
        )
        resp.raise_for_status()
        refresh_token = resp.json()["refresh_token"]  # rotated: the next call uses it

    password = await timed(args.n_password, sign_in)
    rotated = await timed(args.n_http, refresh)
    return [
        row("token endpoint, password grant (scrypt verify)", password, "ms"),
        row("token endpoint, refresh_token grant (rotation)", rotated, "ms"),
    ]


def defaults() -> dict[str, Any]:
    path = Path.cwd() / ".meridian" / "dev.json"
    try:
        dev = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    demo = dev.get("demo_tenant") or {}
    return {
        "base_url": dev.get("base_url"),
        "client_id": demo.get("client_id"),
        "client_secret": demo.get("client_secret"),
        "control_dsn": (dev.get("databases") or {}).get("control"),
        "redis": dev.get("redis_url"),
        "issuer": dev.get("base_url"),
        "tenant_slug": demo.get("slug"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", help="the running API")
    parser.add_argument("--client-id", help="a tenant's OAuth client")
    parser.add_argument("--client-secret")
    parser.add_argument("--control-dsn", help="control plane (postgresql+asyncpg://…)")
    parser.add_argument("--redis", help="Redis URL (L2 of the not-before cache)")
    parser.add_argument("--issuer", default="http://127.0.0.1:8000")
    parser.add_argument("--audience", default="meridian-api")
    parser.add_argument("-n", type=int, default=5000, help="samples per in-process row")
    parser.add_argument("--n-http", type=int, default=500, help="token requests")
    parser.add_argument("--n-password", type=int, default=100, help="password sign-ins")
    parser.add_argument("--tenant-slug", help="the client's tenant (for the password grant)")
    # After add_argument: parser-level defaults then win over the ones given above.
    parser.set_defaults(**{k: v for k, v in defaults().items() if v})
    args = parser.parse_args()
    needed = ("base_url", "client_id", "client_secret", "control_dsn")
    missing = [k for k in needed if not getattr(args, k, None)]
    if missing:
        parser.error(f"missing {', '.join(missing)} (no .meridian/dev.json?)")
    print("| operation | n | p50 | p99 |\n|---|---|---|---|")
    for line in asyncio.run(run(args)):
        print(line)


if __name__ == "__main__":
    main()
