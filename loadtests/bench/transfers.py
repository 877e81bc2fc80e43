"""``python -m loadtests.bench.transfers``: an import and an export of many contacts
through the real path, with the API's and the worker's peak memory.

    .venv/bin/python -m loadtests.bench.transfers --contacts 1000000

On a private set of databases on the local PostgreSQL (dropped at the end) and a Redis
database of its own (``--redis-url``, flushed first; by default a free index claimed as
the test suite claims them, so runs beside it do not collide), it starts a ``meridian
serve`` (one uvicorn worker) and a ``meridian worker`` as processes of their own, writes
a CSV of ``--contacts`` contacts to a temporary file (first and last name, a unique
email, a phone, an external id), then:

- **import**: uploads the file (``POST /v1/imports``, multipart, streamed from disk) and
  polls ``GET /v1/imports/{id}`` until it is done; the worker writes every row through
  the contacts' batch flow (validation, sealed email and phone with their blind
  indexes, the duplicate-email check, the search index, one event per record),
  ``--chunk-rows`` per transaction;
- **export**: ``POST /v1/exports`` of every contact as CSV, polled until done, then the
  file downloaded through its signed URL (no token) to a temporary file.

Prints the rows per second of each (the upload, the worker's part from its start to its
end as the job records them, the whole), the files' sizes, and the peak resident memory
(``VmHWM``) of the API's and the worker's processes.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis

from loadtests.bench.prepare import PgServer, drop_databases, prepare, server_env
from loadtests.bench.servers import Server, free_port, meridian_argv

OPTIONS = {
    "object": "contacts",
    "mapping": {
        "First": "first_name",
        "Last": "last_name",
        "Email": "email",
        "Phone": "phone",
        "Ref": "external_id",
    },
}


def write_csv(path: Path, rows: int) -> int:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["First", "Last", "Email", "Phone", "Ref"])
        for n in range(rows):
            writer.writerow(
                [
                    "Ada",
                    f"Lovelace {n}",
                    f"ada.{n}@bench.example",
                    f"+44 20 7946 {n % 10000:04d}",
                    f"ref-{n}",
                ]
            )
    return path.stat().st_size


def peak_rss_mib(pid: int) -> float:
    """The largest peak resident set (VmHWM) among the process group's processes."""
    peak = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            pgid = int(stat.rsplit(")", 1)[1].split()[2])
            if pgid != pid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (OSError, ValueError, IndexError):
            continue
    return peak / 1024


def _start_without_probe(server: Server) -> Any:
    """A worker serves no HTTP: started without waiting for a ready URL."""
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


async def poll(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> dict[str, Any]:
    last = ""
    while True:
        resp = await client.get(path, headers=headers)
        resp.raise_for_status()
        job: dict[str, Any] = resp.json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        progress = f"{job.get('rows_done', job.get('rows_written'))}"
        if progress != last:
            print(f"  {path}: {job['state']}, {progress} rows", file=sys.stderr, flush=True)
            last = progress
        await asyncio.sleep(2.0)


def seconds(job: dict[str, Any]) -> float:
    started = datetime.fromisoformat(job["started_at"])
    ended = datetime.fromisoformat(job["finished_at"])
    return (ended - started).total_seconds()


async def run(args: argparse.Namespace, pg: PgServer) -> None:
    claimed = None
    if args.redis_url is None:
        from tests.fixtures.redis_db import claim_database

        claimed = claim_database("redis://127.0.0.1:6379", owner=f"bench-transfers-{os.getpid()}")
        claimed.keep()
        args.redis_url = claimed.url
    try:
        await _run(args, pg)
    finally:
        if claimed is not None:
            claimed.release()


async def _run(args: argparse.Namespace, pg: PgServer) -> None:
    redis = Redis.from_url(args.redis_url)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()
    prepared = await prepare(pg, prefix=args.db_prefix, contacts=0, redis_url=args.redis_url)
    tenant = prepared.tenants[0]
    headers = {"Authorization": f"Bearer {tenant.token}"}
    folder = Path(tempfile.mkdtemp(prefix="meridian-transfers-bench-"))
    env = {
        **server_env(prepared.settings),
        "MERIDIAN_IMPORT_CHUNK_ROWS": str(args.chunk_rows),
        "MERIDIAN_MAX_IMPORT_BYTES": str(1 << 30),
    }
    port = free_port()
    api = Server("api", meridian_argv(port, 1), env, port, "/healthz", folder)
    worker = Server("worker", [sys.executable, "-m", "meridian", "worker"], env, port, "/", folder)
    worker.start = _start_without_probe(worker)  # type: ignore[method-assign]
    source = folder / "contacts.csv"
    started = time.perf_counter()
    size = write_csv(source, args.contacts)
    print(
        f"CSV of {args.contacts:,} rows, {size:,} bytes, in {time.perf_counter() - started:.1f} s"
    )
    try:
        with api:
            worker.start()
            assert api.proc is not None
            assert worker.proc is not None
            async with httpx.AsyncClient(base_url=api.base_url, timeout=600) as client:
                began = time.perf_counter()
                with source.open("rb") as data:
                    parts = [
                        ("options", (None, orjson.dumps(OPTIONS), "application/json")),
                        ("file", ("contacts.csv", data, "text/csv")),
                    ]
                    resp = await client.post("/v1/imports", files=parts, headers=headers)
                uploaded = time.perf_counter() - began
                if resp.status_code != 202:
                    raise RuntimeError(f"upload: {resp.status_code} {resp.text}")
                job = await poll(client, f"/v1/imports/{resp.json()['id']}", headers)
                imported = time.perf_counter() - began
                if job["state"] != "done" or job["created"] != args.contacts:
                    raise RuntimeError(f"import: {orjson.dumps(job).decode()}")
                worker_import = seconds(job)

                began = time.perf_counter()
                resp = await client.post(
                    "/v1/exports", json={"object": "contacts", "format": "csv"}, headers=headers
                )
                if resp.status_code != 202:
                    raise RuntimeError(f"export: {resp.status_code} {resp.text}")
                job = await poll(client, f"/v1/exports/{resp.json()['id']}", headers)
                if job["state"] != "done" or job["rows_written"] != args.contacts:
                    raise RuntimeError(f"export: {orjson.dumps(job).decode()}")
                written = time.perf_counter()
                downloaded = 0
                with (folder / "export.csv").open("wb") as out:
                    async with client.stream("GET", job["download_url"]) as file:
                        async for piece in file.aiter_bytes():
                            downloaded += len(piece)
                            out.write(piece)
                exported = time.perf_counter() - began
                download = time.perf_counter() - written
                worker_export = seconds(job)
            api_rss, worker_rss = peak_rss_mib(api.proc.pid), peak_rss_mib(worker.proc.pid)
    finally:
        worker.stop()
        # The data files go; the servers' logs stay in the folder.
        for name in ("contacts.csv", "export.csv"):
            (folder / name).unlink(missing_ok=True)
        if not args.keep_databases:
            await drop_databases(pg, list(prepared.databases.values()))
    n = args.contacts
    print()
    print(f"## Imports and exports: {n:,} contacts, {args.chunk_rows} rows per transaction")
    print()
    print("| step | seconds | rows/s |")
    print("|---|---:|---:|")
    mib = size / 2**20
    print(
        f"| upload ({mib:.0f} MiB, streamed to the shard) | {uploaded:.1f} | {n / uploaded:,.0f} |"
    )
    print(f"| import, the worker's part | {worker_import:.1f} | {n / worker_import:,.0f} |")
    print(f"| import, upload to done | {imported:.1f} | {n / imported:,.0f} |")
    print(f"| export, the worker's part | {worker_export:.1f} | {n / worker_export:,.0f} |")
    print(f"| download ({downloaded / 2**20:.0f} MiB) | {download:.1f} | {n / download:,.0f} |")
    print(f"| export, request to file on disk | {exported:.1f} | {n / exported:,.0f} |")
    print()
    print(f"Peak RSS: API {api_rss:.0f} MiB, worker {worker_rss:.0f} MiB.")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench.transfers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--contacts", type=positive, default=100_000)
    parser.add_argument("--chunk-rows", type=positive, default=500)
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--db-prefix", default="bench_transfers")
    parser.add_argument("--keep-databases", action="store_true")
    return parser.parse_args(argv)


def cli() -> None:
    args = parse_args()
    pg = PgServer(args.pg_host, args.pg_port, args.pg_user, "meridian_app")
    asyncio.run(run(args, pg))


if __name__ == "__main__":
    cli()
