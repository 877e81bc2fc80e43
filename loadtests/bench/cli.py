"""``python -m loadtests.bench``: Meridian's hot endpoints against the bare floor and the
hello-world ceiling, in one run on this machine, printed as a Markdown table.

Cases (wrk -t1 -c<connections>, a warm-up run first, <workers> uvicorn workers everywhere):

- hello-world FastAPI endpoint (the ceiling);
- bare FastAPI + asyncpg endpoint running Meridian's own by-id and first-page SQL
  (the floor; as the PostgreSQL superuser, so no RLS and no transaction around it);
- Meridian ``GET /v1/contacts/{id}`` with the record cache on and off (bearer token,
  tenant resolution, rate limits, routing, residency check, RLS), ids spread over all
  contacts, and cached with the rate limits off (what they cost) and traced (every
  request, and one in ten), exporting to an OTLP sink in the bench (what tracing costs);
- the same uncached read spread over two tenants on two shards;
- Meridian ``GET /v1/contacts?limit=50`` with the list cache off, against the bare
  endpoint's same SQL, and with the list cache on;
- ``many`` (only when asked for: ``--cases many --many-tenants 10,1000,10000``): the
  uncached by-id read spread evenly over N tenants, for each N, on one server
  (``loadtests.bench.many``; the tenants are seeded in bulk first).
- ``citus`` (when asked for, or by default when Citus is installed; the output says why
  it did not run otherwise): the uncached by-id read, the list of 50 and ``POST
  /v1/contacts`` for a tenant on a Citus shard (a private coordinator and two workers),
  each beside the same case for a tenant on a plain shard, on one server
  (``loadtests.bench.citus``).

A tenant's online move between two servers under load has an entry of its own,
``python -m loadtests.bench.move`` (``loadtests.bench.move``): it starts its own servers.

"Cache on" runs Meridian with MERIDIAN_CACHE_RECORDS and MERIDIAN_CACHE_LISTS true,
"cache off" with both false.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncpg
import orjson

from loadtests.bench import citus
from loadtests.bench.many import (
    ManyTenant,
    case_key,
    fetch_tokens,
    many_cases,
    many_ratios,
    many_requests,
    parse_counts,
    prime,
    seed_many,
)
from loadtests.bench.prepare import (
    BenchTenant,
    PgServer,
    Prepared,
    caches,
    contact_sql,
    drop_databases,
    prepare,
    server_env,
)
from loadtests.bench.report import (
    DOCS_INTRO,
    Case,
    Ratio,
    Report,
    WrkResult,
    counter_by,
    counter_total,
    docs_section,
    median_result,
)
from loadtests.bench.servers import (
    ROOT,
    Load,
    Server,
    free_port,
    http_get,
    meridian_argv,
    run_wrk,
    uvicorn_argv,
    wrk_version,
)
from meridian.settings import Settings
from sharding.engines import PoolOptions

CASES = [
    Case("hello", "hello-world `GET /hello`", "bare FastAPI"),
    Case("bare_get", "PK read, bare asyncpg (same SQL)", "bare FastAPI"),
    Case("get_cached", "`GET /v1/contacts/{id}`, record cache on", "Meridian"),
    Case(
        "get_cached_unlimited",
        "`GET /v1/contacts/{id}`, record cache on, rate limits off",
        "Meridian",
    ),
    Case(
        "get_cached_traced",
        "`GET /v1/contacts/{id}`, record cache on, every request traced (OTLP)",
        "Meridian",
    ),
    Case(
        "get_cached_sampled",
        "`GET /v1/contacts/{id}`, record cache on, one request in ten traced",
        "Meridian",
    ),
    Case("get_uncached", "`GET /v1/contacts/{id}`, record cache off", "Meridian"),
    Case("get_two_shards", "`GET /v1/contacts/{id}`, cache off, 2 tenants on 2 shards", "Meridian"),
    Case("bare_list", "first 50 contacts, bare asyncpg (same SQL)", "bare FastAPI"),
    Case("list", "`GET /v1/contacts?limit=50`, list cache off", "Meridian"),
    Case("list_cached", "`GET /v1/contacts?limit=50`, list cache on", "Meridian"),
]
RATIOS = [
    Ratio("cached GET / hello-world (req/s)", "get_cached", "hello", "rps", at_least=0.5),
    Ratio("uncached GET / bare PK read (req/s)", "get_uncached", "bare_get", "rps", at_least=0.8),
    Ratio("cached GET / uncached GET (req/s)", "get_cached", "get_uncached", "rps"),
    Ratio("cached GET, rate limits on / off (req/s)", "get_cached", "get_cached_unlimited", "rps"),
    Ratio("cached GET, traced / not (req/s)", "get_cached_traced", "get_cached", "rps"),
    Ratio("cached GET, 10 % traced / not (req/s)", "get_cached_sampled", "get_cached", "rps"),
    Ratio("uncached GET p99 / bare PK read p99", "get_uncached", "bare_get", "p99", at_most=1.0),
    Ratio("cached GET p99 / bare PK read p99", "get_cached", "bare_get", "p99", at_most=1.0),
    Ratio("uncached GET / hello-world (req/s)", "get_uncached", "hello", "rps"),
    Ratio("list of 50 p50 / bare list p50", "list", "bare_list", "p50", at_most=1.3),
    Ratio("list of 50 p99 / bare list p99", "list", "bare_list", "p99", at_most=1.3),
    Ratio("list of 50 / bare list (req/s)", "list", "bare_list", "rps"),
    Ratio("cached list of 50 / uncached list (req/s)", "list_cached", "list", "rps"),
    Ratio("two shards / one shard, uncached GET (req/s)", "get_two_shards", "get_uncached", "rps"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per case")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of discarded warm-up")
    p.add_argument("--connections", type=int, default=64, help="wrk connections")
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers, every server")
    p.add_argument("--contacts", type=int, default=2000, help="contacts per tenant")
    p.add_argument("--rounds", type=int, default=1, help="repeat everything; report medians")
    p.add_argument(
        "--cases",
        default=None,
        help="comma-separated subset of: "
        + ", ".join([*(c.key for c in CASES), citus.KEY, MANY])
        + f" (default: all but {MANY}; {citus.KEY} only where Citus is installed)",
    )
    p.add_argument(
        "--many-tenants",
        default="10,1000,10000",
        help="the 'many' case: tenant counts the read is spread over (all seeded first)",
    )
    p.add_argument("--many-contacts", type=int, default=10, help="contacts per 'many' tenant")
    p.add_argument("--db-prefix", default="bench", help="names of the databases it (re)creates")
    p.add_argument("--keep-databases", action="store_true")
    p.add_argument("--pg-host", default=os.environ.get("MERIDIAN_TEST_PG_HOST", "127.0.0.1"))
    p.add_argument(
        "--pg-port", type=int, default=int(os.environ.get("MERIDIAN_TEST_PG_PORT", "5432"))
    )
    p.add_argument("--pg-user", default=os.environ.get("MERIDIAN_TEST_PG_USER", "postgres"))
    p.add_argument("--app-role", default="meridian_app")
    p.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/15",
        help="Redis for Meridian's L2 cache ('' for none)",
    )
    p.add_argument("--append-docs", action="store_true", help="append the table to --docs")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args(argv)
    # Asked for by name, the Citus cases must run; by default only where they can.
    args.citus_asked = args.cases is not None and citus.KEY in args.cases.split(",")
    if args.cases is None:
        args.cases = ",".join([*(c.key for c in CASES), citus.KEY])
    unknown = set(args.cases.split(",")) - {c.key for c in CASES} - {MANY, citus.KEY}
    if unknown:
        p.error(f"unknown cases: {', '.join(sorted(unknown))}")
    try:
        args.many_counts = parse_counts(args.many_tenants) if MANY in args.cases.split(",") else []
    except ValueError as exc:
        p.error(f"--many-tenants: {exc}")
    return args


# The many-tenants case's key in --cases (its results are keyed many_<N>).
MANY = "many"
# Per-tenant state read on every request whose L1 hit rate the many case reports.
STATE_KINDS = ("directory", "nbf")


def _get_requests(tenants: list[BenchTenant]) -> list[tuple[str, str | None]]:
    """Meridian by-id reads, alternating between the tenants, ids spread over all rows."""
    per_tenant = [[(f"/v1/contacts/{cid}", t.token) for cid in t.contact_ids] for t in tenants]
    return [req for group in zip(*per_tenant, strict=True) for req in group]


def _bare_get_requests(tenant: BenchTenant) -> list[tuple[str, str | None]]:
    return [(f"/pg/contacts/{tenant.id}/{cid}", None) for cid in tenant.contact_ids]


def _check(url: str, token: str | None, expect_rows: int | None = None) -> None:
    """One request before the load: a benchmark of error responses measures nothing."""
    status, body = http_get(url, token)
    if status != 200:
        raise RuntimeError(f"GET {url} answered {status}: {body[:300]!r}")
    if expect_rows is not None:
        rows = len(orjson.loads(body)["data"])
        if rows != expect_rows:
            raise RuntimeError(f"GET {url} returned {rows} rows, not {expect_rows}")


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        prepared: Prepared,
        log_dir: Path,
        many: list[ManyTenant] | None = None,
        citus_setup: citus.CitusSetup | None = None,
    ) -> None:
        self.args = args
        self.prepared = prepared
        self.citus_setup = citus_setup
        self.many_tenants = many or []
        # "<case> <kind>" -> L1 hit rate of that per-tenant state during the case.
        self.state_hits: dict[str, float] = {}
        self.log_dir = log_dir
        self.load = Load(args.connections, args.duration, args.warmup)
        self.wanted = set(args.cases.split(","))
        self.results: dict[str, list[WrkResult]] = {}
        self.cache_hits: dict[str, float] = {}
        self.get_sql, self.list_sql = contact_sql()

    def _measure(
        self,
        key: str,
        server: Server,
        requests: list[tuple[str, str | None]],
        *,
        method: str = "GET",
        body: str | None = None,
    ) -> None:
        print(f"  {key} ...", end="", flush=True)
        result = run_wrk(server.base_url, requests, self.load, method=method, body=body)
        print(
            f" {result.requests_per_sec:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
            f"p99 {result.p99_ms:.2f} ms, non-2xx {result.non_2xx}",
            flush=True,
        )
        self.results.setdefault(key, []).append(result)

    def _wants(self, *keys: str) -> bool:
        return bool(self.wanted.intersection(keys))

    def bare(self) -> None:
        if not self._wants("hello", "bare_get", "bare_list"):
            return
        tenant = self.prepared.tenants[0]
        port = free_port()
        env = {
            "PYTHONPATH": str(ROOT),
            "BENCH_DSN": PgServer(
                self.args.pg_host, self.args.pg_port, self.args.pg_user, self.args.app_role
            ).raw(self.prepared.databases[tenant.shard_id]),
            "BENCH_POOL_SIZE": str(PoolOptions().read_pool_size),
            "BENCH_GET_SQL": self.get_sql,
            "BENCH_LIST_SQL": self.list_sql,
        }
        argv = uvicorn_argv("loadtests.bench.bare_app:create_app", port, self.args.workers)
        with Server("bare", argv, env, port, "/hello", self.log_dir) as server:
            if "hello" in self.wanted:
                self._measure("hello", server, [("/hello", None)])
            if "bare_get" in self.wanted:
                _check(f"{server.base_url}/pg/contacts/{tenant.id}/{tenant.contact_ids[0]}", None)
                self._measure("bare_get", server, _bare_get_requests(tenant))
            if "bare_list" in self.wanted:
                path = f"/pg/contacts/{tenant.id}?limit=50"
                _check(server.base_url + path, None, expect_rows=50)
                self._measure("bare_list", server, [(path, None)])

    def unlimited(self) -> None:
        """The cached read without rate limits: what the limiter costs a request."""
        self._cached_variant("get_cached_unlimited", {"MERIDIAN_RATE_LIMITS": "false"})

    def traced(self) -> None:
        """The cached read traced, every request and one in ten, exported over
        OTLP/HTTP to a sink in this process: what tracing costs."""
        for key, ratio in (("get_cached_traced", "1"), ("get_cached_sampled", "0.1")):
            if not self._wants(key):
                continue
            with OtlpSink() as sink:
                extra = {
                    "MERIDIAN_TRACES_ENDPOINT": sink.url,
                    "MERIDIAN_TRACES_SAMPLE_RATIO": ratio,
                }
                self._cached_variant(key, extra)
                print(f"  spans exported to the sink: {sink.batches} batches, {sink.bytes:,} bytes")

    def _cached_variant(self, key: str, extra: dict[str, str]) -> None:
        """``GET /v1/contacts/{id}``, record cache on, on a server with ``extra`` set."""
        if not self._wants(key):
            return
        port = free_port()
        env = {
            **server_env(self.prepared.settings),
            **caches(on=True),
            **extra,
        }
        argv = meridian_argv(port, self.args.workers)
        with Server(f"meridian-{key}", argv, env, port, "/readyz", self.log_dir) as server:
            first = self.prepared.tenants[0]
            _check(f"{server.base_url}/v1/contacts/{first.contact_ids[0]}", first.token)
            self._measure(key, server, _get_requests([first]))
            refused = self._refused(server)
            if refused:
                print(f"  answers other than 200, from /metrics: {refused}")

    def meridian(self, *, cached: bool) -> None:
        keys = (
            ("get_cached", "list_cached") if cached else ("get_uncached", "get_two_shards", "list")
        )
        if not self._wants(*keys):
            return
        tenants = self.prepared.tenants
        port = free_port()
        env = {
            **server_env(self.prepared.settings),
            **caches(on=cached),
        }
        name = "meridian-cached" if cached else "meridian-uncached"
        argv = meridian_argv(port, self.args.workers)
        with Server(name, argv, env, port, "/readyz", self.log_dir) as server:
            first = tenants[0]
            _check(f"{server.base_url}/v1/contacts/{first.contact_ids[0]}", first.token)
            if cached and "get_cached" in self.wanted:
                before = self._contact_l1_hits(server)
                self._measure("get_cached", server, _get_requests([first]))
                self.cache_hits["get_cached"] = self._contact_l1_hits(server) - before
            list_key = "list_cached" if cached else "list"
            if list_key in self.wanted:
                path = "/v1/contacts?limit=50"
                _check(server.base_url + path, first.token, expect_rows=50)
                self._measure(list_key, server, [(path, first.token)])
            if not cached and "get_uncached" in self.wanted:
                before = self._contact_l1_hits(server)
                self._measure("get_uncached", server, _get_requests([first]))
                self.cache_hits["get_uncached"] = self._contact_l1_hits(server) - before
            if not cached and "get_two_shards" in self.wanted:
                second = tenants[1]
                _check(f"{server.base_url}/v1/contacts/{second.contact_ids[0]}", second.token)
                self._measure("get_two_shards", server, _get_requests(tenants))

    def many(self) -> None:
        """The uncached by-id read spread over N tenants, for each N, on one server."""
        if not self.args.many_counts:
            return
        port = free_port()
        env = {
            **server_env(self.prepared.settings),
            **caches(on=False),
        }
        argv = meridian_argv(port, self.args.workers)
        with Server("meridian-many", argv, env, port, "/readyz", self.log_dir) as server:
            tokens = asyncio.run(fetch_tokens(server.base_url, self.many_tenants))
            for n in self.args.many_counts:
                requests = many_requests(self.many_tenants, tokens, n)
                _check(server.base_url + requests[0][0], requests[0][1])
                asyncio.run(prime(server.base_url, requests, n))
                before = {k: self._state_counts(server, k) for k in STATE_KINDS}
                self._measure(case_key(n), server, requests)
                for kind in STATE_KINDS:
                    hits, misses = (
                        a - b
                        for a, b in zip(self._state_counts(server, kind), before[kind], strict=True)
                    )
                    total = hits + misses
                    self.state_hits[f"{case_key(n)} {kind}"] = (
                        hits / total if total else float("nan")
                    )

    def citus(self) -> None:
        """Each Citus case right after its plain-shard twin, on one server (caches off)."""
        setup = self.citus_setup
        if setup is None:
            return
        port = free_port()
        env = {
            **server_env(setup.settings),
            **caches(on=False),
        }
        argv = meridian_argv(port, self.args.workers)
        tenants = {"plain": citus.plain_tenant(self.prepared), "citus": setup.tenant}
        with Server("meridian-citus", argv, env, port, "/readyz", self.log_dir) as server:
            for tenant in tenants.values():
                _check(f"{server.base_url}/v1/contacts/{tenant.contact_ids[0]}", tenant.token)
                _check(f"{server.base_url}/v1/contacts?limit=50", tenant.token, expect_rows=50)
            for engine, tenant in tenants.items():
                self._measure(f"{engine}_get", server, citus.by_id_requests(tenant))
            for engine, tenant in tenants.items():
                self._measure(f"{engine}_list", server, [("/v1/contacts?limit=50", tenant.token)])
            for engine, tenant in tenants.items():
                url = f"{server.base_url}/v1/contacts"
                status, answer = http_get(url, tenant.token, json_body=citus.CREATE_BODY.encode())
                if status != 201:
                    raise RuntimeError(f"POST {url} answered {status}: {answer[:300]!r}")
                self._measure(
                    f"{engine}_create",
                    server,
                    [("/v1/contacts", tenant.token)],
                    method="POST",
                    body=citus.CREATE_BODY,
                )

    @staticmethod
    def _state_counts(server: Server, kind: str) -> tuple[float, float]:
        """L1 (hits, misses) of a kind of per-tenant state so far (one worker's)."""
        status, body = http_get(server.base_url + "/metrics")
        if status != 200:
            return float("nan"), float("nan")
        text = body.decode()
        name = "meridian_cache_requests_total"
        return (
            counter_total(text, name, level="l1", kind=kind, result="hit"),
            counter_total(text, name, level="l1", kind=kind, result="miss"),
        )

    @staticmethod
    def _refused(server: Server) -> dict[str, float]:
        """The server's answers by status but 200 (wrk counts them, not which)."""
        status, body = http_get(server.base_url + "/metrics")
        if status != 200:
            return {}
        by_status: dict[str, float] = {}
        for labels, count in counter_by(body.decode(), "meridian_http_requests_total").items():
            code = dict(labels)["status"]
            if code != "200":
                by_status[code] = by_status.get(code, 0) + count
        return by_status

    @staticmethod
    def _contact_l1_hits(server: Server) -> float:
        """Record-cache hits so far (one worker's count when there are several)."""
        status, body = http_get(server.base_url + "/metrics")
        if status != 200:
            return float("nan")
        return counter_total(
            body.decode(), "meridian_cache_requests_total", kind="contact", result="hit"
        )

    def run(self) -> None:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("bare FastAPI server", self.bare),
            ("Meridian, record cache on", lambda: self.meridian(cached=True)),
            ("Meridian, record cache on, rate limits off", self.unlimited),
            ("Meridian, record cache on, traced", self.traced),
            ("Meridian, record cache off", lambda: self.meridian(cached=False)),
            ("Meridian, many tenants", self.many),
            ("Meridian, Citus shard and plain shard", self.citus),
        ]
        for round_no in range(1, self.args.rounds + 1):
            for title, step in steps:
                print(f"round {round_no}/{self.args.rounds}: {title}", flush=True)
                step()


class OtlpSink:
    """An OTLP/HTTP receiver that takes every export and keeps only its size, on a
    thread of the bench (the API process exports to it as to a collector)."""

    def __init__(self) -> None:
        self.batches = self.bytes = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(size)
                sink.batches += 1
                sink.bytes += size
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/v1/traces"

    def __enter__(self) -> OtlpSink:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


async def _pg_version(pg: PgServer) -> str:
    conn = await asyncpg.connect(pg.raw("postgres"))
    try:
        version: str = await conn.fetchval("SHOW server_version")
        return version
    finally:
        await conn.close()


def _git_revision() -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    rev = subprocess.run(  # noqa: S603
        [git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False
    ).stdout.strip()
    dirty = subprocess.run(  # noqa: S603
        [git, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    ).stdout.strip()
    return f"{rev}{' + uncommitted changes' if dirty else ''}" if rev else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _notes(bench: Bench, args: argparse.Namespace) -> list[str]:
    notes = []
    ran = set(bench.results)
    if not ran & {c.key for c in CASES}:  # only the Citus cases: the others' notes say nothing
        return [*_citus_notes(bench, args), *_worker_notes(args)]
    missing = [f for f in ("cache_records", "cache_lists") if f not in Settings.model_fields]
    if missing:
        names = ", ".join(f"MERIDIAN_{f.upper()}" for f in missing)
        notes.append(f"{names} do(es) not exist in this build: 'cache on' rows ran without it.")
    notes.append(
        "Cache on: MERIDIAN_CACHE_RECORDS and MERIDIAN_CACHE_LISTS true (contacts and their "
        "pages are cached in process only: their PII stays out of Redis); cache off: both "
        "false. The directory and verified-token caches are on in every Meridian row."
    )
    for key, hits in bench.cache_hits.items():
        notes.append(f"Contact record-cache hits counted by /metrics during `{key}`: {hits:,.0f}.")
    if bench.state_hits:
        rates = ", ".join(f"`{key}` {rate:.1%}" for key, rate in bench.state_hits.items())
        notes.append(f"L1 hit rate of per-tenant state during the many-tenants cases: {rates}.")
    notes.append(
        "The bare endpoint connects as the PostgreSQL superuser (RLS not evaluated) with an "
        f"asyncpg pool of {PoolOptions().read_pool_size} per worker, Meridian's read-pool "
        "size; it runs one statement per request, where Meridian also begins a read-only "
        "transaction, enters the tenant (residency check, SET LOCAL) and commits."
    )
    return [*notes, *_citus_notes(bench, args), *_worker_notes(args)]


def _citus_notes(bench: Bench, args: argparse.Namespace) -> list[str]:
    if bench.citus_setup is not None:
        return [
            "Citus cases: a coordinator and two workers, private clusters of the system's "
            "PostgreSQL started for the run on this machine (fsync on, as on the plain "
            "shard's server; citus.shard_count 8; wal_level logical), the shard migrated by "
            "its owner; the plain shard is us-1 on the system server. One Meridian server "
            "(caches off) serves both tenants, each Citus case measured right after its "
            "plain twin; the create cases POST a contact without an email (no duplicate check)."
        ]
    if args.citus_skipped:
        return [f"Citus cases not run: {args.citus_skipped}"]
    return []


def _worker_notes(args: argparse.Namespace) -> list[str]:
    if args.workers > 1:
        return [
            "With several uvicorn workers the keep-alive connections can split unevenly "
            "between them (see PERF-LIMITS); repeat a run whose figures look halved."
        ]
    return []


def _command(argv: list[str]) -> str:
    return shlex.join([".venv/bin/python", "-m", "loadtests.bench", *argv])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    args.citus_skipped = None
    if citus.KEY in args.cases.split(","):
        why = citus.unavailable()
        if why is not None and args.citus_asked:
            print(f"the Citus cases cannot run: {why}", file=sys.stderr)
            return 2
        if why is not None:
            print(f"Citus cases not run: {why}")
            args.citus_skipped = why
            args.cases = ",".join(c for c in args.cases.split(",") if c != citus.KEY)
    pg = PgServer(args.pg_host, args.pg_port, args.pg_user, args.app_role)
    started = datetime.now(UTC)
    # Others share this machine: the load average tells a reader how quiet the run was.
    load_before = os.getloadavg()[0]
    print(f"preparing databases {args.db_prefix}_* ({args.contacts} contacts per tenant)")
    prepared = asyncio.run(
        prepare(pg, prefix=args.db_prefix, contacts=args.contacts, redis_url=args.redis_url or None)
    )
    many: list[ManyTenant] = []
    citus_setup: citus.CitusSetup | None = None
    cleanup = contextlib.ExitStack()
    try:
        if citus.KEY in args.cases.split(","):
            print("starting a Citus cluster (a coordinator and two workers)")
            cluster = cleanup.enter_context(citus.private_cluster(args.app_role))
            citus_setup = asyncio.run(
                citus.add_citus_tenant(
                    prepared, cluster, prefix=args.db_prefix, contacts=args.contacts
                )
            )
        if args.many_counts:
            count = max(args.many_counts)
            print(f"seeding {count:,} tenants ({args.many_contacts} contacts each)")
            many, seconds = asyncio.run(
                seed_many(pg, prepared, tenants=count, contacts=args.many_contacts)
            )
            print(f"  seeded in {seconds:.1f} s ({count / seconds:,.1f} tenants/s)")
        with tempfile.TemporaryDirectory(prefix="meridian-bench-") as logs:
            bench = Bench(args, prepared, Path(logs), many, citus_setup)
            try:
                bench.run()
            except Exception:
                for log in sorted(Path(logs).glob("*.log")):
                    print(f"--- {log.name}\n{log.read_text()[-4000:]}", file=sys.stderr)
                raise
    finally:
        cleanup.close()  # the Citus cluster, if one was started
        if not args.keep_databases:
            asyncio.run(drop_databases(pg, list(prepared.databases.values())))

    citus_ratios = citus.RATIOS if citus_setup is not None else []
    report = Report(
        cases=[
            c
            for c in [*CASES, *many_cases(args.many_counts), *citus.CASES]
            if c.key in bench.results
        ],
        results={k: median_result(v) for k, v in bench.results.items()},
        # A ratio neither of whose cases ran says nothing (a subset of the cases).
        ratios=[
            r
            for r in [*RATIOS, *many_ratios(args.many_counts), *citus_ratios]
            if {r.numerator, r.denominator} & set(bench.results)
        ],
        notes=_notes(bench, args),
    )
    environment = [
        f"Date: {started:%Y-%m-%d %H:%M} UTC; commit {_git_revision()}",
        f"Machine load before the run (1-minute average; other users share it): {load_before:.2f}",
        f"Machine: {os.cpu_count()} vCPU {_cpu_model()}; Python {platform.python_version()}; "
        f"PostgreSQL {asyncio.run(_pg_version(pg))}; wrk {wrk_version()}",
        f"Load: wrk -t1 -c{args.connections}, {args.warmup:g} s warm-up then {args.duration:g} s "
        f"measured per case; {args.rounds} round(s), medians shown",
        f"Servers: uvicorn (uvloop, httptools, no access log), {args.workers} worker(s) each, "
        "heap frozen after start-up; wrk and PostgreSQL share the same machine",
        f"Data: one tenant per shard, {args.contacts} contacts each; by-id reads cycle "
        "through all of them",
    ]
    if citus_setup is not None:
        environment.append(
            f"Citus {citus_setup.version}: a coordinator and "
            f"{len(citus_setup.cluster.workers)} workers on this machine, one tenant with "
            f"{args.contacts} contacts on it"
        )
    if args.many_counts:
        environment.append(
            f"Many tenants: {max(args.many_counts):,} seeded tenants with "
            f"{args.many_contacts} contacts each (loadtests.seed); reads spread evenly over "
            f"the first {', '.join(f'{n:,}' for n in args.many_counts)}"
        )
    print()
    print("\n".join(f"- {line}" for line in environment))
    print()
    print(report.markdown())
    if args.append_docs:
        docs: Path = args.docs
        if not docs.exists():
            docs.write_text(DOCS_INTRO)
        only_citus = set(bench.results) <= {c.key for c in citus.CASES}
        what = (
            "Citus shard vs plain shard"
            if only_citus
            else "Meridian vs bare asyncpg vs hello-world"
        )
        title = f"{what} ({started:%Y-%m-%d})"
        section = docs_section(
            title=title,
            command=_command(sys.argv[1:] if argv is None else argv),
            environment=environment,
            report=report,
        )
        with docs.open("a") as out:
            out.write(section)
        print(f"\nappended to {docs}")
    return 0
