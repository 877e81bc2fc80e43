"""``python -m loadtests.bench.batch``: what a batch write costs against single writes.

On a private set of databases on the local PostgreSQL (dropped at the end) and the local
Redis, the ASGI app is called straight from this process (no sockets, one event loop,
``gc.freeze()`` after a warm-up, as the servers do), in rounds; each round writes
``--records`` new records of each object as:

- ``single``: one ``POST /v1/<object>`` per record, one after the other (what a client
  without batches does, minus the network);
- ``batch``: ``POST /v1/<object>/batch`` requests of ``--size`` creates (1,000: the
  limit), each item in its savepoint;
- ``batch, atomic``: the same with ``"atomic": true`` (no savepoints);
- ``single PATCH``: the records the batch case made, changed one ``PATCH`` each;
- ``upsert``: the same records upserted again by their external ids in batches of
  ``--size`` (the update path: a lookup, the row lock, the UPDATE).

Objects: ``accounts`` (name, domain, external id) and ``contacts`` (names, a sealed email
and phone with their blind indexes, the duplicate-email check, external id). Prints, per
object and case, the best and median over the rounds of the wall time for all records,
µs per record, records per second, the ratio to one request per record (of the medians:
creates against single POSTs, upserts against single PATCHes), and the median CPU time
of this process per record (less at the mercy of a busy machine than the
wall time; the database's own work is not in it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from loadtests.bench.prepare import PgServer, drop_databases, prepare
from meridian.app import create_app

_counter = itertools.count()
Body = dict[str, Any]


async def call(app: Any, method: str, path: str, token: str, body: bytes) -> tuple[int, bytes]:
    """One request through the ASGI app: its status and body."""
    status = 0
    chunks: list[bytes] = []
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
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
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
    return status, b"".join(chunks)


def account(n: int) -> Body:
    return {"name": f"Account {n}", "domain": f"a{n}.example", "external_id": f"acct-{n}"}


def contact(n: int) -> Body:
    return {
        "first_name": "Ada",
        "last_name": f"Lovelace {n}",
        "email": f"ada{n}@bench.example",
        "phone": f"+44 20 7946 {n % 10000:04d}",
        "external_id": f"cont-{n}",
    }


OBJECTS: dict[str, Callable[[int], Body]] = {"accounts": account, "contacts": contact}


async def single(app: Any, token: str, plural: str, bodies: list[Body]) -> None:
    for body in bodies:
        status, text = await call(app, "POST", f"/v1/{plural}", token, orjson.dumps(body))
        assert status == 201, (status, text[:300])


async def patched(app: Any, token: str, plural: str, changes: dict[str, Body]) -> None:
    for record_id, body in changes.items():
        path = f"/v1/{plural}/{record_id}"
        status, text = await call(app, "PATCH", path, token, orjson.dumps(body))
        assert status == 200, (status, text[:300])


async def batched(
    app: Any, token: str, plural: str, items: list[Body], size: int, *, atomic: bool = False
) -> list[str]:
    """The records' ids."""
    ids: list[str] = []
    for start in range(0, len(items), size):
        body = orjson.dumps({"items": items[start : start + size], "atomic": atomic})
        status, text = await call(app, "POST", f"/v1/{plural}/batch", token, body)
        assert status == 200, (status, text[:300])
        results = orjson.loads(text)["results"]
        bad = [r for r in results if r["status"] not in (200, 201)]
        assert not bad, bad[:3]
        ids += [r["id"] for r in results]
    return ids


async def run(args: argparse.Namespace, pg: PgServer) -> None:
    prepared = await prepare(pg, prefix=args.db_prefix, contacts=0, redis_url=args.redis_url)
    token = prepared.tenants[0].token
    settings = prepared.settings.model_copy(update={"shard_pool_size": 4})
    app = create_app(settings)
    # object -> case -> (wall, CPU) seconds for all the round's records
    times: dict[str, dict[str, list[tuple[float, float]]]] = {
        plural: {c: [] for c in ("single", "batch", "batch, atomic", "single PATCH", "upsert")}
        for plural in OBJECTS
    }
    try:
        async with app.router.lifespan_context(app):
            for plural, make in OBJECTS.items():  # warm: pools, statement caches, the policy
                await single(app, token, plural, [make(next(_counter)) for _ in range(50)])
                items = [{"op": "create", "body": make(next(_counter))} for _ in range(50)]
                await batched(app, token, plural, items, args.size)
            gc.collect()
            gc.freeze()
            for _ in range(args.rounds):
                for plural, make in OBJECTS.items():
                    cases = times[plural]
                    bodies = [make(next(_counter)) for _ in range(args.records)]
                    with timed(cases["single"]):
                        await single(app, token, plural, bodies)

                    made = [make(next(_counter)) for _ in range(args.records)]
                    items = [{"op": "create", "body": body} for body in made]
                    with timed(cases["batch"]):
                        ids = await batched(app, token, plural, items, args.size)

                    items = [{"op": "create", "body": make(next(_counter))} for _ in made]
                    with timed(cases["batch, atomic"]):
                        await batched(app, token, plural, items, args.size, atomic=True)

                    field = "title" if plural == "contacts" else "name"
                    changes = {i: {field: "Changed"} for i in ids}
                    with timed(cases["single PATCH"]):
                        await patched(app, token, plural, changes)

                    upserts = [
                        {
                            "op": "upsert",
                            "external_id": body["external_id"],
                            "body": {"external_id": body["external_id"], field: "Updated"},
                        }
                        for body in made
                    ]
                    with timed(cases["upsert"]):
                        await batched(app, token, plural, upserts, args.size)
    finally:
        if not args.keep_databases:
            await drop_databases(pg, list(prepared.databases.values()))
    report(args, times)


@contextlib.contextmanager
def timed(runs: list[tuple[float, float]]) -> Iterator[None]:
    """Appends the block's wall and CPU seconds to ``runs``."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    runs.append((time.perf_counter() - wall, time.process_time() - cpu))


def report(
    args: argparse.Namespace, times: dict[str, dict[str, list[tuple[float, float]]]]
) -> None:
    print(
        f"## Batch writes: {args.records} records per case, batches of {args.size}, "
        f"{args.rounds} rounds (best / median)"
    )
    print()
    print(
        "| object | case | all records, s | µs per record | records/s | vs one request each "
        "| CPU µs per record |"
    )
    print("|---|---|---|---|---|---|---|")
    for plural, cases in times.items():
        for case, runs in cases.items():
            one_each = "single PATCH" if case in ("single PATCH", "upsert") else "single"
            base = statistics.median(w for w, _ in cases[one_each])
            walls = [w for w, _ in runs]
            best, median = min(walls), statistics.median(walls)
            per = [r / args.records * 1e6 for r in (best, median)]
            rate = [args.records / r for r in (best, median)]
            cpu = statistics.median(c for _, c in runs) / args.records * 1e6
            print(
                f"| {plural} | {case} | {best:.2f} / {median:.2f} | {per[0]:.0f} / {per[1]:.0f} "
                f"| {rate[0]:.0f} / {rate[1]:.0f} | {base / median:.1f} x | {cpu:.0f} |"
            )


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.batch", description=__doc__)
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--db-prefix", default="bench_batch")
    parser.add_argument("--keep-databases", action="store_true")
    parser.add_argument("--records", type=positive, default=1000, help="records per case")
    parser.add_argument("--size", type=positive, default=1000, help="items per batch (≤ 1000)")
    parser.add_argument("--rounds", type=positive, default=3)
    args = parser.parse_args(argv)
    if args.size > 1000:
        parser.error("--size: a batch takes at most 1,000 items")
    return args


def cli() -> None:
    args = parse_args()
    pg = PgServer(args.pg_host, args.pg_port, args.pg_user, "meridian_app")
    asyncio.run(run(args, pg))


if __name__ == "__main__":
    cli()
