"""``python -m loadtests.bench.inprocess``: where a cached read's time goes, without
sockets, wrk or uvicorn in the way.

Calls the ASGI apps directly (one event loop, ``gc.freeze()`` after warm-up, as the
servers do) and prints microseconds per request for:

- ``hello``: the bare app's hello-world (``loadtests.bench.bare_app``), the ceiling;
- ``meridian``: ``GET /v1/contacts/{id}`` with the record cache warm, as routed;
- ``meridian, no header parameter``: the same flow from a route that declares no
  ``If-None-Match`` header (what FastAPI's header parameter costs);
- ``meridian, no parameters``: the same flow from a route that declares only the
  request and resolves the path, the access and the header itself (what FastAPI's whole
  parameter and dependency solving costs).

and, under cProfile, the share of ``meridian``'s own time (tottime) spent in each
package: FastAPI and Starlette, the app, the cache, the crypto, and so on.

The last two are measuring instruments mounted beside the app's own route in this
process only; the app serves none of them. Both sit at the app's own route's place in
the routing table, so routing costs the same for all three.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import pstats
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message

from loadtests.bench.prepare import PgServer, drop_databases, prepare
from meridian.app import create_app
from meridian.contacts.repository import ContactRepository
from meridian.crud import endpoints
from meridian.deps import CanReadContacts, RequireTenant

Headers = list[tuple[bytes, bytes]]


async def call(app: ASGIApp, path: str, headers: Headers) -> int:
    """One GET through ``app``; its status."""
    status = 0

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    await app(scope, receive, send)
    return status


async def per_request(run: Callable[[int], Awaitable[Any]], n: int) -> float:
    """Microseconds per call of ``run`` over ``n`` calls."""
    start = time.perf_counter()
    for i in range(n):
        await run(i)
    return (time.perf_counter() - start) / n * 1e6


def _instruments(app: FastAPI) -> None:
    """The two measuring routes, placed right after the app's contacts routes."""
    probe = APIRouter(prefix="/bench-probe")

    @probe.get("/no-header/{contact_id}")
    async def no_header(contact_id: UUID, access: CanReadContacts) -> Response:
        return await endpoints.fetch(access, ContactRepository, "contact", contact_id, None)

    require = RequireTenant("contacts", "read")

    @probe.get("/no-parameters/{contact_id}")
    async def no_parameters(request: Request) -> Response:
        access = await require(request)
        contact_id = UUID(request.path_params["contact_id"])
        if_none_match = request.headers.get("if-none-match")
        return await endpoints.fetch(
            access, ContactRepository, "contact", contact_id, if_none_match
        )

    app.include_router(probe)
    routes = app.router.routes
    mine = routes.pop()
    contacts = next(
        i
        for i, route in enumerate(routes)
        if getattr(getattr(route, "original_router", None), "prefix", "") == "/v1/contacts"
    )
    routes.insert(contacts + 1, mine)


async def main(args: argparse.Namespace) -> None:
    pg = PgServer(args.pg_host, args.pg_port, args.pg_user, "meridian_app")
    prepared = await prepare(pg, prefix=args.db_prefix, contacts=200, redis_url=args.redis_url)
    tenant = prepared.tenants[0]
    ids = tenant.contact_ids[:100]
    headers: Headers = [(b"authorization", f"Bearer {tenant.token}".encode()), (b"host", b"b")]
    os.environ.update(
        BENCH_DSN=pg.raw("postgres"), BENCH_GET_SQL="SELECT 1", BENCH_LIST_SQL="SELECT 1"
    )
    from loadtests.bench.bare_app import create_app as create_bare_app

    bare = create_bare_app()
    app = create_app(prepared.settings.model_copy(update={"cache_records": True}))
    _instruments(app)
    paths = {
        "meridian": "/v1/contacts/",
        "meridian, no header parameter": "/bench-probe/no-header/",
        "meridian, no parameters": "/bench-probe/no-parameters/",
    }
    try:
        async with bare.router.lifespan_context(bare), app.router.lifespan_context(app):
            for path in paths.values():
                for contact_id in ids:  # warm: every record in the cache
                    status = await call(app, f"{path}{contact_id}", headers)
                    assert status == 200, (path, status)
            gc.collect()
            gc.freeze()
            results: dict[str, list[float]] = {"hello": [], **{k: [] for k in paths}}
            for _ in range(args.rounds):
                results["hello"].append(
                    await per_request(lambda _: call(bare, "/hello", []), args.requests)
                )
                for name, path in paths.items():

                    async def one(i: int, path: str = path) -> int:
                        return await call(app, f"{path}{ids[i % len(ids)]}", headers)

                    results[name].append(await per_request(one, args.requests))
            profile = cProfile.Profile()
            profile.enable()
            for i in range(args.requests):
                await call(app, f"{paths['meridian']}{ids[i % len(ids)]}", headers)
            profile.disable()
    finally:
        if not args.keep_databases:
            await drop_databases(pg, list(prepared.databases.values()))
    hello = min(results["hello"])
    print(f"| case | µs per request (best of {args.rounds}) | hello-world / case |")
    print("|---|---|---|")
    for name, times in results.items():
        best = min(times)
        print(f"| {name} | {best:.1f} | {hello / best:.2f} |")
    print()
    print("| package (meridian case, cProfile tottime) | share |")
    print("|---|---|")
    shares = by_package(profile)
    for package, share in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"| {package} | {share:.0%} |")


# Where a function's file lives -> the name it is reported under.
_PACKAGES = (
    ("/fastapi/", "FastAPI"),
    ("/starlette/", "Starlette"),
    ("/pydantic", "pydantic"),
    ("/cryptography/", "cryptography"),
    ("/meridian/crud/", "meridian.crud (flows, repositories)"),
    ("/meridian/encryption/", "meridian.encryption"),
    ("/meridian/", "meridian (deps, identity, routers, web)"),
    ("/cache/", "cache"),
    ("/primitives/", "primitives"),
    ("/authz/", "authz"),
    ("/tenancy/", "tenancy"),
    ("/sharding/", "sharding"),
    ("/loadtests/", "the calling loop"),
    ("/anyio/", "anyio"),
    ("/python3.11/", "the standard library (asyncio, contextlib, typing, ...)"),
)


def by_package(profile: cProfile.Profile) -> dict[str, float]:
    """Share of the profiled time spent in each package's own code (tottime)."""
    totals: dict[str, float] = defaultdict(float)
    stats: Any = pstats.Stats(profile).stats
    for (filename, _, _), (_, _, tottime, _, _) in stats.items():
        # Built-ins ("~": dict lookups, isinstance, ...) are their callers' work.
        default = "built-ins, called from all of the above" if filename == "~" else "other"
        name = next((label for part, label in _PACKAGES if part in filename), default)
        totals[name] += tottime
    whole = sum(totals.values()) or 1.0
    return {name: t / whole for name, t in totals.items()}


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=3000, help="requests per case and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--db-prefix", default="benchinproc")
    p.add_argument("--keep-databases", action="store_true")
    p.add_argument("--pg-host", default=os.environ.get("MERIDIAN_TEST_PG_HOST", "127.0.0.1"))
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--pg-user", default="postgres")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    asyncio.run(main(p.parse_args()))


if __name__ == "__main__":
    cli()
