"""``python -m loadtests.bench.events``: what events cost and how fast they arrive.

Two measurements, each on a private set of databases on the local PostgreSQL (dropped
at the end) and the local Redis:

1. **The outbox's cost on a create.** ``POST /v1/accounts`` called straight on the ASGI
   app in this process (no sockets: the difference is the database's and the app's own
   work), in rounds that alternate the app as it is and the app with the outbox taken
   out (the commit listener removed and ``outbox.record`` a no-op, in this process only:
   the instrument this comparison needs). Prints µs per create of each, best and median
   of the rounds, and the added cost as a ratio measured within the same run.
2. **Event to webhook and event to stream latency.** A ``meridian serve`` and a
   ``meridian worker`` process (``--workers N``: several); in this process a webhook
   receiver (a real HTTP server on 127.0.0.1) subscribed to ``account.created``, an SSE
   client on ``/v1/stream``, and a paced writer creating accounts at ``--rate`` per
   second for ``--duration`` seconds, after ``--warmup`` seconds of the same load that
   are not measured. For each account: from the create's response (its transaction
   committed) to the webhook's arrival at the receiver and to the event's arrival on the
   stream, on the same clock. Prints p50/p95/p99/max, and the events missing from
   either. The bench's Redis database (``--redis-url``) is emptied first.

   ``--writes sql`` measures the event pipeline alone (relay, stream, consumers,
   deliveries) at rates the API cannot reach on a small machine: instead of calling the
   API, the writer commits ``account.created`` events into the tenant's outbox with the
   outbox's own statement, as the app role inside the tenant, one transaction each; the
   clock starts at each commit. The API still serves the stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import orjson
from redis.asyncio import Redis
from sqlalchemy import event
from uuid_utils.compat import uuid7

from loadtests.bench.prepare import PgServer, drop_databases, prepare, server_env
from loadtests.bench.servers import Server, free_port, meridian_argv
from loadtests.receivers import Received, receiver
from meridian.app import create_app
from meridian.events import outbox
from sharding.router import ShardSession

# Requests in flight at once from the paced writer.
CONCURRENCY = 32


@contextlib.contextmanager
def outbox_taken_out() -> Iterator[None]:
    """The app without its outbox, in this process, for the comparison only."""
    event.remove(ShardSession, "before_commit", outbox._append)
    original = outbox.record
    outbox.record = lambda *_a, **_k: None  # type: ignore[assignment]
    try:
        yield
    finally:
        outbox.record = original  # type: ignore[assignment]
        event.listen(ShardSession, "before_commit", outbox._append)


async def post(app: Any, path: str, token: str, body: bytes) -> int:
    """One POST through the ASGI app; its status."""
    status = 0
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"host", b"bench"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    return status


async def outbox_cost(args: argparse.Namespace, pg: PgServer) -> None:
    prepared = await prepare(
        pg, prefix=f"{args.db_prefix}_oc", contacts=0, redis_url=args.redis_url
    )
    tenant = prepared.tenants[0]
    app = create_app(prepared.settings)
    body = orjson.dumps({"name": "Acme Corporation", "domain": "acme.example"})
    runs: dict[str, list[float]] = {"with the outbox": [], "without": []}
    try:
        async with app.router.lifespan_context(app):
            for _ in range(200):  # warm: pools, statement caches, the policy
                assert await post(app, "/v1/accounts", tenant.token, body) == 201
            gc.collect()
            gc.freeze()
            for _ in range(args.rounds):
                for name in runs:
                    with outbox_taken_out() if name == "without" else contextlib.nullcontext():
                        start = time.perf_counter()
                        for _ in range(args.creates):
                            status = await post(app, "/v1/accounts", tenant.token, body)
                            assert status == 201, status
                        runs[name].append((time.perf_counter() - start) / args.creates * 1e6)
    finally:
        if not args.keep_databases:
            await drop_databases(pg, list(prepared.databases.values()))
    print(f"## The outbox's cost on POST /v1/accounts ({args.rounds} rounds of {args.creates})")
    print()
    print("| case | best µs per create | median µs per create |")
    print("|---|---|---|")
    for name, times in runs.items():
        print(f"| {name} | {min(times):.0f} | {statistics.median(times):.0f} |")
    best = min(runs["with the outbox"]) / min(runs["without"])
    median = statistics.median(runs["with the outbox"]) / statistics.median(runs["without"])
    print()
    print(f"added cost: best {best - 1:+.1%}, median {median - 1:+.1%} (target <= +10%)")
    print()


def percentiles(values: list[float]) -> str:
    if not values:
        return "| - | - | - | - |"
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return f"| {at(0.5):.0f} | {at(0.95):.0f} | {at(0.99):.0f} | {ordered[-1] * 1000:.0f} |"


async def read_stream(base_url: str, token: str, arrived: dict[str, float]) -> None:
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    async with (
        # Reads wait up to a minute: the stream sends a heartbeat every 15 s.
        httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10.0, read=60.0)) as client,
        client.stream(
            "GET", "/v1/stream", params={"type": "account.created"}, headers=headers
        ) as resp,
    ):
        if resp.status_code != 200:
            raise RuntimeError(f"stream: {resp.status_code} {await resp.aread()!r}")
        async for line in resp.aiter_lines():
            if line.startswith("data:"):
                got = orjson.loads(line[5:].strip())
                record_id = got["record"]["id"]
                arrived.setdefault(record_id, time.monotonic())


async def latency(args: argparse.Namespace, pg: PgServer) -> None:
    # The bench's own Redis database: jobs and stream entries of an earlier run (whose
    # databases are gone) would otherwise be worked on during this one.
    redis = Redis.from_url(args.redis_url)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()
    prepared = await prepare(
        pg, prefix=f"{args.db_prefix}_lat", contacts=0, redis_url=args.redis_url
    )
    tenant = prepared.tenants[0]
    env = {**server_env(prepared.settings), "MERIDIAN_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true"}
    logs = Path(tempfile.mkdtemp(prefix="meridian-events-bench-"))
    port = free_port()
    api = Server("api", meridian_argv(port, args.api_workers), env, port, "/healthz", logs)
    workers = [
        Server(
            f"worker{n}", [sys.executable, "-m", "meridian", "worker"], env, port, "/healthz", logs
        )
        for n in range(args.workers)
    ]
    acked: dict[str, float] = {}
    shard_db = prepared.databases[tenant.shard_id]
    hooked: dict[str, float] = {}
    streamed: dict[str, float] = {}
    try:
        with api:
            # A worker serves no HTTP: started without waiting for a ready URL.
            for worker in workers:
                worker.start = _start_without_probe(worker)  # type: ignore[method-assign]
                worker.start()
            async with receiver() as hook:

                def on_hook(got: Received) -> int:
                    record_id = got.json()["record"]["id"]
                    hooked.setdefault(record_id, got.at)
                    return 200

                hook.answer = on_hook
                headers = {"Authorization": f"Bearer {tenant.token}"}
                # A bounded number of connections: httpcore's pool spends CPU per queued
                # request, and this process also runs the receiver and the stream.
                limits = httpx.Limits(
                    max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY
                )
                async with httpx.AsyncClient(
                    base_url=api.base_url, timeout=60, limits=limits
                ) as client:
                    resp = await client.post(
                        "/v1/webhooks",
                        json={"url": f"{hook.url}/hook", "event_types": ["account.created"]},
                        headers=headers,
                    )
                    if resp.status_code != 201:
                        raise RuntimeError(f"webhook subscription: {resp.status_code} {resp.text}")
                    stream = asyncio.create_task(read_stream(api.base_url, tenant.token, streamed))
                    await asyncio.sleep(1.0)

                    async def load(seconds: float, into: dict[str, float]) -> None:
                        if args.writes == "sql":
                            dsn = pg.raw(shard_db, pg.app_role)
                            await _paced_appends(dsn, tenant.id, args.rate, seconds, into)
                        else:
                            await _paced_creates(client, headers, args.rate, seconds, into)

                    if args.warmup > 0:
                        # The same load first, not measured: the worker's and the API's
                        # pools, statement caches and imports warm up on it (the first
                        # seconds of a cold worker queue deliveries for up to a second).
                        await load(args.warmup, {})
                    await load(args.duration, acked)
                    deadline = time.monotonic() + 30
                    # Two tasks fill these; polling them is simpler than signalling from both.
                    # (Both also hold the warm-up's records: count the measured ones.)
                    while time.monotonic() < deadline and (  # noqa: ASYNC110
                        not acked.keys() <= hooked.keys() or not acked.keys() <= streamed.keys()
                    ):
                        await asyncio.sleep(0.2)
                    stream.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await stream
    finally:
        for worker in workers:
            worker.stop()
        if not args.keep_databases:
            await drop_databases(pg, list(prepared.databases.values()))
    to_hook = [hooked[r] - t for r, t in acked.items() if r in hooked]
    to_stream = [streamed[r] - t for r, t in acked.items() if r in streamed]
    start = "event committed" if args.writes == "sql" else "create acknowledged"
    print(
        f"## Event to webhook and to stream, {args.rate}/s for {args.duration:g} s "
        f"({len(acked)} {'events committed' if args.writes == 'sql' else 'accounts created'})"
    )
    print()
    print("| path | p50 ms | p95 ms | p99 ms | max ms | missing |")
    print("|---|---|---|---|---|---|")
    print(f"| {start} → webhook received {percentiles(to_hook)} {len(acked) - len(to_hook)} |")
    print(f"| {start} → stream event {percentiles(to_stream)} {len(acked) - len(to_stream)} |")
    print()
    print(f"(server logs in {logs})")


def _start_without_probe(server: Server) -> Any:
    import os
    import subprocess

    def start(timeout: float = 0.0) -> None:
        log = (server.log_dir / f"{server.name}.log").open("ab")
        server.proc = subprocess.Popen(  # noqa: S603 - argv built by the harness
            server.argv,
            env={**os.environ, **server.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    return start


async def _paced(one: Callable[[int], Awaitable[None]], rate: float, duration: float) -> float:
    """``one(i)`` started ``rate`` times a second for ``duration`` seconds, each on time
    whether the earlier ones have finished or not; the seconds until all had."""
    start = time.monotonic()
    tasks = []
    for i in range(int(rate * duration)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return time.monotonic() - start


async def _paced_creates(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    rate: float,
    duration: float,
    acked: dict[str, float],
) -> None:
    slots = asyncio.Semaphore(CONCURRENCY)
    failed: list[str] = []

    async def create(i: int) -> None:
        async with slots:
            try:
                resp = await client.post(
                    "/v1/accounts", json={"name": f"Bench {i}"}, headers=headers
                )
            except httpx.TransportError as exc:
                # A kept-alive connection the server closed as it was reused: a write not
                # acknowledged, counted, not the end of the run.
                failed.append(type(exc).__name__)
                return
        if resp.status_code == 201:
            acked[resp.json()["id"]] = time.monotonic()
        else:
            failed.append(str(resp.status_code))

    elapsed = await _paced(create, rate, duration)
    print(
        f"(writes: {len(acked)} acknowledged in {elapsed:.1f} s, {len(acked) / elapsed:.0f}/s; "
        f"{len(failed)} not: {sorted(set(failed))})"
    )


async def _paced_appends(
    dsn: str, tenant_id: UUID, rate: float, duration: float, acked: dict[str, float]
) -> None:
    """``account.created`` events committed straight into the outbox, paced."""
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=CONCURRENCY // 4)
    assert pool is not None
    failed: list[str] = []
    statement = outbox._insert(1)

    async def append(i: int) -> None:
        record_id = uuid7()
        data = {"record": {"id": str(record_id), "name": f"Bench {i}"}}
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(f"SET LOCAL app.tenant_id = '{tenant_id}'")
                await conn.execute(
                    statement,
                    tenant_id,
                    uuid7(),
                    "account.created",
                    "account",
                    record_id,
                    None,
                    "system",
                    None,
                    orjson.dumps(data).decode(),
                )
        except asyncpg.PostgresError as exc:
            failed.append(type(exc).__name__)
            return
        acked[str(record_id)] = time.monotonic()

    try:
        elapsed = await _paced(append, rate, duration)
    finally:
        await pool.close()
    print(
        f"(events: {len(acked)} committed in {elapsed:.1f} s, {len(acked) / elapsed:.0f}/s; "
        f"{len(failed)} not: {sorted(set(failed))})"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.events", description=__doc__)
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/14",
        help="a Redis database of the bench's own: emptied before the latency part",
    )
    parser.add_argument("--db-prefix", default="bench_events")
    parser.add_argument("--keep-databases", action="store_true")
    parser.add_argument("--part", choices=["all", "outbox", "latency"], default="all")
    parser.add_argument("--creates", type=int, default=1000, help="creates per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn workers of the API")
    parser.add_argument("--workers", type=int, default=1, help="latency: meridian worker processes")
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="latency: seconds of load not measured"
    )
    parser.add_argument(
        "--writes",
        choices=["api", "sql"],
        default="api",
        help="latency: events from API creates, or committed into the outbox directly",
    )
    args = parser.parse_args()
    pg = PgServer(args.pg_host, args.pg_port, args.pg_user, "meridian_app")
    if args.part in ("all", "outbox"):
        asyncio.run(outbox_cost(args, pg))
    if args.part in ("all", "latency"):
        asyncio.run(latency(args, pg))


if __name__ == "__main__":
    cli()
