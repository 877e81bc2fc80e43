"""``python -m loadtests.bench.move``: one tenant moved online between two PostgreSQL
servers while it is written, measured as its writers and its neighbours see it.

Three private clusters of the system's PostgreSQL are started for the run and removed
at the end: a control plane, and the shards ``src`` (region us) and ``dst`` (region eu),
both ``wal_level = logical``, registered as ``meridian shards add`` does. One tenant
gets ``--contacts`` contacts (email and phone encrypted as the API stores them) and
``--activities-per-contact`` activities each on ``src``; ``--neighbours`` tenants on each
shard get a few contacts. A Meridian server (``meridian serve``, record and list caches
off, so reads reach the shards) serves them over HTTP, and a load process of its own
runs ``--writers`` writers creating and updating the moved tenant's contacts (each
acknowledged write remembered; a 503 is retried until acknowledged, creates under an
Idempotency-Key) and paced readers of one neighbour on each shard.

After ``--before`` seconds this process plans and drives the move with
``sharding.mover.Mover`` (the directory invalidation published through Redis by a
``Runtime`` on the same settings, as the app does), lets the load run ``--after``
seconds more, stops it, reads every acknowledged contact back through the API (from
``dst`` by then) and checks the shards' rows. It prints the move's time, per state and
in total, the write freeze as the mover measured it and as the writers saw it, the
acknowledged writes lost, and the neighbours' read latency before and during the move;
the exit status is 1 when an acknowledged write was lost or a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import orjson
from sqlalchemy.ext.asyncio import create_async_engine

from loadtests.bench.cli import _cpu_model, _git_revision
from loadtests.bench.prepare import (
    BENCH_KEK,
    ISSUER,
    BenchTenant,
    _onboard,
    _seed_contacts,
    caches,
    server_env,
)
from loadtests.bench.servers import ROOT, Server, meridian_argv
from meridian.ids import new_id
from meridian.operations import add_shard, migrate_all
from meridian.runtime import Runtime
from meridian.settings import Settings
from meridian_dev.postgres import LocalCluster, LocalPgError, free_port
from sharding.catalog import tenant_tables
from sharding.models import MOVE_PATH, MoveState
from sharding.mover import MoveInfo
from tenancy.keyring import TenantKeyring

SRC, DST = "src", "dst"
# A move from one to the other is also a change of the tenant's region.
REGIONS = {SRC: "us", DST: "eu"}
DATABASES = {"control": "meridian_control", SRC: "meridian_src", DST: "meridian_dst"}
APP_ROLE = "meridian_app"
# What a read-back compares with the last acknowledged answer for the same contact.
CHECKED = ("first_name", "last_name", "email", "title", "version", "updated_at")
# The mover's states in the order a move goes through them.
STATES = list(MOVE_PATH)
# A write still unacknowledged after this long, once the load is told to stop, is given up.
GIVE_UP_AFTER = 60.0
TARGET_FREEZE_MS = 1000.0
TARGET_TOTAL_S = 60.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench.move", description=__doc__.split("\n")[0]
    )
    p.add_argument("--contacts", type=int, default=100_000, help="contacts of the moved tenant")
    p.add_argument("--activities-per-contact", type=int, default=1)
    p.add_argument("--neighbours", type=int, default=2, help="neighbour tenants per shard")
    p.add_argument("--neighbour-contacts", type=int, default=2000)
    p.add_argument("--writers", type=int, default=8, help="concurrent writers, moved tenant")
    p.add_argument(
        "--write-rate",
        type=float,
        default=0.0,
        help="writes per second per writer (0: each writes as fast as it is answered)",
    )
    p.add_argument("--readers", type=int, default=2, help="readers per neighbour read")
    p.add_argument(
        "--read-rate", type=float, default=50.0, help="reads per second per neighbour read"
    )
    p.add_argument("--before", type=float, default=10.0, help="seconds of load before the move")
    p.add_argument("--after", type=float, default=3.0, help="seconds of load after the move")
    p.add_argument(
        "--retry-delay", type=float, default=0.05, help="seconds before a 503 is retried"
    )
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers of the API")
    p.add_argument(
        "--no-fsync",
        action="store_true",
        help="run the private servers with fsync off (quicker, unlike production)",
    )
    p.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/15",
        help="Redis for the cache and its invalidations ('' for none: instances then "
        "learn of the move from the shards' refusals)",
    )
    # The load process's own entry (started by this module, not by hand).
    p.add_argument("--load-plan", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--load-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.contacts < 1 or args.neighbour_contacts < 1:
        p.error("--contacts and --neighbour-contacts must be positive")
    if args.writers < 1 or args.neighbours < 1 or args.readers < 1:
        p.error("--writers, --neighbours and --readers must be positive")
    if args.read_rate <= 0 or args.write_rate < 0:
        p.error("--read-rate must be positive and --write-rate not negative")
    return args


# -- the private servers and the platform on them --------------------------------------


@contextlib.contextmanager
def private_servers(*, fsync: bool, app_role: str = APP_ROLE) -> Iterator[dict[str, LocalCluster]]:
    """The control plane's server and the two shards' (``wal_level = logical``), each
    with the app role and its database, on free loopback ports; stopped and deleted on
    exit, whatever happened."""
    started: list[LocalCluster] = []

    def start(name: str) -> LocalCluster:
        # Straight under the temp dir: as root the server runs as `postgres`, which must
        # be able to reach the folder.
        root = Path(tempfile.mkdtemp(prefix=f"meridian-bench-move-{name}-"))
        settings = {} if name == "control" else {"wal_level": "logical"}
        node = LocalCluster(root, port=free_port(), fsync=fsync, settings=settings)
        started.append(node)
        node.initdb()
        node.start()
        node.ensure_role(app_role, login=True, bypass_rls=False)
        node.ensure_database(DATABASES[name])
        return node

    try:
        with ThreadPoolExecutor(3) as pool:
            futures = {name: pool.submit(start, name) for name in DATABASES}
            servers = {name: future.result() for name, future in futures.items()}
        yield servers
    finally:
        for node in reversed(started):
            with contextlib.suppress(LocalPgError):  # best effort: remove the rest anyway
                node.stop("immediate")
            shutil.rmtree(node.root, ignore_errors=True)


def platform_settings(servers: Mapping[str, LocalCluster], redis_url: str | None) -> Settings:
    control = servers["control"]
    return Settings(
        control_dsn=control.dsn(DATABASES["control"], APP_ROLE),
        control_admin_dsn=control.dsn(DATABASES["control"]),
        shards=[],  # registered in the topology by add_shard, as `meridian shards add` does
        app_db_role=APP_ROLE,
        redis_url=redis_url,
        issuer=ISSUER,
        access_token_ttl=4 * 3600,  # tokens are issued once and must outlive the run
        kek=BENCH_KEK,
    )


@dataclass(frozen=True)
class Setup:
    settings: Settings
    moved: BenchTenant
    neighbours: list[BenchTenant]  # --neighbours on src, then as many on dst
    activities: int  # the moved tenant's
    seconds: float


async def _seed_activities(url: str, tenant_id: UUID, contact_ids: Sequence[UUID], per: int) -> int:
    """``per`` activities for each contact, written into the shard at ``url`` as its
    superuser (as ``_seed_contacts`` writes contacts)."""
    start = datetime.now(UTC) - timedelta(days=365)
    rows = []
    for i, contact_id in enumerate(contact_ids):
        for k in range(per):
            at = start + timedelta(minutes=i, seconds=k)
            rows.append((tenant_id, new_id(), "call", f"Call {i}.{k}", at, contact_id, at))
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table(
            "activity",
            records=rows,
            columns=[
                "tenant_id",
                "id",
                "type",
                "subject",
                "occurred_at",
                "contact_id",
                "created_at",
            ],
        )
        await conn.execute("ANALYZE activity")
    finally:
        await conn.close()
    return len(rows)


async def prepare_platform(servers: Mapping[str, LocalCluster], args: argparse.Namespace) -> Setup:
    """Migrate the control plane, add both shards, onboard the tenants through the admin
    API and seed their rows straight into the shards."""
    began = time.monotonic()
    settings = platform_settings(servers, args.redis_url or None)
    await migrate_all(settings)
    for shard_id in (SRC, DST):
        server, database = servers[shard_id], DATABASES[shard_id]
        await add_shard(
            settings,
            shard_id=shard_id,
            region=REGIONS[shard_id],
            dsn=server.dsn(database, APP_ROLE),
            admin_dsn=server.dsn(database),
        )
    onboarded = await _onboard(settings, "moved", [SRC])
    for k in range(args.neighbours):
        onboarded += await _onboard(settings, f"neighbour{k}", [SRC, DST])
    control = create_async_engine(settings.control_dsn)
    tenants: list[BenchTenant] = []
    activities = 0
    try:
        keyring = TenantKeyring(control, settings.key_provider())
        for n, (tenant_id, shard_id, token) in enumerate(onboarded):
            cipher = await keyring.active_cipher(tenant_id)
            url = servers[shard_id].url(DATABASES[shard_id])
            count = args.contacts if n == 0 else args.neighbour_contacts
            ids = await _seed_contacts(url, tenant_id, count, cipher)
            if n == 0:
                activities = await _seed_activities(
                    url, tenant_id, ids, args.activities_per_contact
                )
            tenants.append(BenchTenant(tenant_id, shard_id, token, ids))
    finally:
        await control.dispose()
    neighbours = sorted(tenants[1:], key=lambda t: t.shard_id != SRC)
    return Setup(settings, tenants[0], neighbours, activities, time.monotonic() - began)


# -- the load process -----------------------------------------------------------------


@dataclass(frozen=True)
class LoadPlan:
    base_url: str
    token: str  # the moved tenant's
    seeded: list[str]  # its seeded contacts (updates pick from these as well)
    # shard id -> (token, contact ids) of the neighbour read on that shard
    readers: dict[str, tuple[str, list[str]]]
    writers: int
    write_rate: float
    readers_per_tenant: int
    read_rate: float
    retry_delay: float


@dataclass
class LoadResult:
    # [writer, "create" | "update", started, ended, attempts, 503s, transport errors,
    #  final status]: one per logical write; times are time.monotonic() (system-wide).
    writes: list[list[Any]] = field(default_factory=list)
    # [shard id, started, ended, status]
    reads: list[list[Any]] = field(default_factory=list)
    # contact id -> CHECKED fields of the last acknowledged answer for it
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)
    # [Idempotency-Key, body, contact id] of acknowledged creates
    creates: list[list[Any]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


async def _writer(
    client: httpx.AsyncClient,
    plan: LoadPlan,
    w: int,
    stop: asyncio.Event,
    result: LoadResult,
) -> None:
    """Creates and updates contacts, one write at a time; the contacts it updates are
    its own (its share of the seeded ones, and those it created), so the last answer
    acknowledged for a contact is what the contact must read as at the end."""
    rng = random.Random(w)  # noqa: S311 - picking rows, not secrets
    seeded = plan.seeded[w :: plan.writers]
    created: list[str] = []
    auth = {"Authorization": f"Bearer {plan.token}"}
    interval = 1.0 / plan.write_rate if plan.write_rate > 0 else 0.0
    next_at = time.monotonic() + rng.random() * interval
    n = 0
    while not stop.is_set():
        n += 1
        if interval:
            next_at = max(next_at + interval, time.monotonic() - 1.0)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        tag = f"w{w}n{n}"
        if n % 2 or not (created or seeded):
            kind, method, path, ok = "create", "POST", "/v1/contacts", 201
            body: dict[str, Any] = {
                "first_name": "Writer",
                "last_name": f"Contact {tag}",
                "email": f"{tag}@bench.test",
                "title": f"Created {tag}",
            }
            headers = {**auth, "Idempotency-Key": f"move-{tag}"}
        else:
            mine = created if created and (not seeded or rng.random() < 0.5) else seeded
            kind, method, path, ok = "update", "PATCH", f"/v1/contacts/{rng.choice(mine)}", 200
            body = {"title": f"Updated {tag}", "email": f"{tag}.u@bench.test"}
            headers = auth
        started = time.monotonic()
        attempts = refused = errors = status = 0
        answer: httpx.Response | None = None
        while True:
            attempts += 1
            try:
                answer = await client.request(method, path, json=body, headers=headers)
                status = answer.status_code
            except httpx.HTTPError:
                # No answer: it may have been applied or not; the retry settles it (the
                # create's key replays a create that was).
                errors += 1
                status = 0
            if status == ok:
                break
            if status not in (0, 503):
                break  # refused for a reason of its own: not acknowledged, not retried
            if stop.is_set() and time.monotonic() - started > GIVE_UP_AFTER:
                break
            refused += status == 503
            await asyncio.sleep(plan.retry_delay)
        result.writes.append(
            [w, kind, started, time.monotonic(), attempts, refused, errors, status]
        )
        if status == ok and answer is not None:
            data = answer.json()
            result.acked[data["id"]] = {k: data[k] for k in CHECKED}
            if kind == "create":
                created.append(data["id"])
                result.creates.append([headers["Idempotency-Key"], body, data["id"]])
        elif answer is not None:
            result.unexpected.append(f"{method} {path}: {status} {answer.text[:300]}")
        else:
            result.unexpected.append(f"{method} {path}: no answer after {attempts} attempts")


async def _reader(
    client: httpx.AsyncClient,
    plan: LoadPlan,
    shard_id: str,
    r: int,
    stop: asyncio.Event,
    result: LoadResult,
) -> None:
    """By-id reads of the neighbour on ``shard_id`` at its share of --read-rate."""
    token, ids = plan.readers[shard_id]
    rng = random.Random(f"{shard_id}{r}")  # noqa: S311
    headers = {"Authorization": f"Bearer {token}"}
    interval = plan.readers_per_tenant / plan.read_rate
    next_at = time.monotonic() + rng.random() * interval
    while not stop.is_set():
        next_at = max(next_at + interval, time.monotonic() - 1.0)
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        started = time.monotonic()
        try:
            status = (
                await client.get(f"/v1/contacts/{rng.choice(ids)}", headers=headers)
            ).status_code
        except httpx.HTTPError:
            status = 0
        result.reads.append([shard_id, started, time.monotonic(), status])


async def run_load(plan: LoadPlan, stop: asyncio.Event, ready: asyncio.Event) -> LoadResult:
    result = LoadResult()
    connections = plan.writers + plan.readers_per_tenant * len(plan.readers) + 4
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=plan.base_url, timeout=30.0, limits=limits) as client:
        tasks = [
            asyncio.create_task(_writer(client, plan, w, stop, result)) for w in range(plan.writers)
        ]
        tasks += [
            asyncio.create_task(_reader(client, plan, shard_id, r, stop, result))
            for shard_id in plan.readers
            for r in range(plan.readers_per_tenant)
        ]
        ready.set()
        await asyncio.gather(*tasks)
    return result


def read_plan(path: Path) -> LoadPlan:
    raw = orjson.loads(path.read_bytes())
    raw["readers"] = {k: (v[0], v[1]) for k, v in raw["readers"].items()}
    return LoadPlan(**raw)


def write_result(path: Path, result: LoadResult) -> None:
    path.write_bytes(
        orjson.dumps(
            {
                "writes": result.writes,
                "reads": result.reads,
                "acked": result.acked,
                "creates": result.creates,
                "unexpected": result.unexpected,
            }
        )
    )


async def _load_main(plan: LoadPlan) -> LoadResult:
    """The load process: ``ready`` on stdout once it runs, then load until a line (or
    the end) on stdin."""
    stop, ready = asyncio.Event(), asyncio.Event()
    load = asyncio.create_task(run_load(plan, stop, ready))
    await ready.wait()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    stop.set()
    return await load


class LoadProcess:
    """The load in a process of its own: its clients must not share this process's
    event loop (or its GIL) with the mover whose freeze they measure."""

    def __init__(self, plan: LoadPlan, folder: Path) -> None:
        self.plan_path = folder / "load-plan.json"
        self.out_path = folder / "load-result.json"
        self.plan_path.write_bytes(orjson.dumps(plan))
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "loadtests.bench.move",
            "--load-plan",
            str(self.plan_path),
            "--load-out",
            str(self.out_path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"the load process did not start: {line!r}")

    async def stop(self) -> LoadResult:
        proc = self.proc
        assert proc is not None
        assert proc.stdin is not None
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
        proc.stdin.close()
        code = await asyncio.wait_for(proc.wait(), GIVE_UP_AFTER + 60)
        if code != 0:
            raise RuntimeError(f"the load process exited with {code}")
        data = orjson.loads(await asyncio.to_thread(self.out_path.read_bytes))
        return LoadResult(
            data["writes"], data["reads"], data["acked"], data["creates"], data["unexpected"]
        )

    async def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- the move -------------------------------------------------------------------------


@dataclass
class MoveRun:
    info: MoveInfo
    started: float  # time.monotonic() before plan_move
    ended: float  # after run_move returned
    # state -> time.monotonic() it was first seen in the control plane (polled)
    seen: dict[MoveState, float]
    # The freeze as the mover recorded it, on time.monotonic()'s clock.
    freeze: tuple[float, float] | None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


async def drive_move(runtime: Runtime, tenant_id: UUID, target: str) -> MoveRun:
    """Plan and run the move, polling its state every 25 ms on the side (the mover is
    not slowed down by it: the poll reads the control plane only)."""
    mover = runtime.mover()
    seen: dict[MoveState, float] = {}
    started = time.monotonic()
    planned = await mover.plan_move(tenant_id, target)
    seen[planned.state] = time.monotonic()

    async def poll() -> None:
        while True:
            state = (await mover.get_move(planned.id)).state
            seen.setdefault(state, time.monotonic())
            await asyncio.sleep(0.025)

    polling = asyncio.create_task(poll())
    try:
        info = await mover.run_move(planned.id)
    finally:
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
    ended = time.monotonic()
    seen.setdefault(info.state, ended)
    freeze = None
    if info.fenced_at is not None and info.freeze_ms is not None:
        # Wall clock (the control plane's, this machine's) to monotonic.
        offset = time.time() - time.monotonic()
        begin = info.fenced_at.timestamp() - offset
        freeze = (begin, begin + info.freeze_ms / 1000)
    return MoveRun(info, started, ended, seen, freeze)


# -- checks after the move -------------------------------------------------------------


@dataclass
class Checks:
    read_back: int = 0
    lost: list[str] = field(default_factory=list)  # acknowledged, missing or older
    newer: int = 0  # a later version than acknowledged (an unanswered write applied)
    replays: int = 0
    replays_wrong: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # Requests of the checks that got no answer (and were sent again).
    transport_errors: list[str] = field(default_factory=list)


async def _send(
    client: httpx.AsyncClient, checks: Checks, method: str, path: str, **kw: Any
) -> httpx.Response:
    """One request of the checks, sent again on a transport error (reads, and creates
    under their Idempotency-Key, are safe to repeat); the errors are counted."""
    for attempt in range(5):
        try:
            return await client.request(method, path, **kw)
        except httpx.TransportError as exc:
            checks.transport_errors.append(f"{method} {path}: {exc!r}")
            if attempt == 4:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


async def read_back(base_url: str, token: str, result: LoadResult, checks: Checks) -> None:
    """Every acknowledged contact through the API, against its last acknowledged
    answer; then a sample of the acknowledged creates replayed under their keys."""
    headers = {"Authorization": f"Bearer {token}"}
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as client:

        async def one(cid: str, acked: dict[str, Any]) -> None:
            async with gate:
                resp = await _send(client, checks, "GET", f"/v1/contacts/{cid}", headers=headers)
            checks.read_back += 1
            if resp.status_code != 200:
                checks.lost.append(f"{cid}: {resp.status_code} {resp.text[:200]}")
                return
            read = resp.json()
            if read["version"] > acked["version"]:
                checks.newer += 1
            elif read["version"] < acked["version"]:
                checks.lost.append(f"{cid}: version {read['version']} < {acked['version']}")
            else:
                differ = [k for k in CHECKED if read[k] != acked[k]]
                if differ:
                    checks.lost.append(f"{cid}: {', '.join(differ)} differ")

        await asyncio.gather(*(one(cid, acked) for cid, acked in result.acked.items()))

        async def replay(key: str, body: dict[str, Any], cid: str) -> None:
            async with gate:
                resp = await _send(
                    client,
                    checks,
                    "POST",
                    "/v1/contacts",
                    json=body,
                    headers={**headers, "Idempotency-Key": key},
                )
            checks.replays += 1
            if resp.status_code != 201 or resp.json().get("id") != cid:
                checks.replays_wrong.append(f"{key}: {resp.status_code} {resp.text[:200]}")

        sample = random.Random(0).sample(result.creates, min(50, len(result.creates)))  # noqa: S311
        await asyncio.gather(*(replay(key, body, cid) for key, body, cid in sample))


async def check_shards(
    servers: Mapping[str, LocalCluster],
    runtime: Runtime,
    setup: Setup,
    result: LoadResult,
    checks: Checks,
) -> dict[str, int]:
    """The directory names dst at epoch 2 in region eu, src keeps no row of the tenant,
    dst has every seeded row and every acknowledged create; returns dst's counts."""
    tenant_id = setup.moved.id
    ctx = await runtime.directory.load(tenant_id)
    if ctx is None or (ctx.shard_id, ctx.epoch, ctx.region) != (DST, 2, REGIONS[DST]):
        checks.problems.append(f"the directory says {ctx}")
    counts: dict[str, dict[str, int]] = {}
    for shard_id in (SRC, DST):
        conn = await asyncpg.connect(servers[shard_id].url(DATABASES[shard_id]))
        try:
            counts[shard_id] = {
                table: await conn.fetchval(
                    f'SELECT count(*) FROM "{table}" WHERE tenant_id = $1',  # noqa: S608
                    tenant_id,
                )
                for table in await tenant_tables(conn)
            }
        finally:
            await conn.close()
    left = {t: n for t, n in counts[SRC].items() if n}
    if left:
        checks.problems.append(f"rows of the tenant left on {SRC}: {left}")
    created = sum(1 for w in result.writes if w[1] == "create" and w[7] == 201)
    if counts[DST]["contact"] < len(setup.moved.contact_ids) + created:
        checks.problems.append(
            f"{counts[DST]['contact']} contacts on {DST}, fewer than "
            f"{len(setup.moved.contact_ids)} seeded + {created} acknowledged creates"
        )
    if counts[DST]["activity"] != setup.activities:
        checks.problems.append(
            f"{counts[DST]['activity']} activities on {DST}, not {setup.activities}"
        )
    return counts[DST]


# -- figures --------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _verification_row(progress: Mapping[str, Any]) -> str:
    """How the move verified: rows compared live (before the fence), and under the
    fence the mode (delta: counts and the rows that changed; full: every row) and
    the rows compared by key."""
    live = progress.get("live_check") or {}
    differing = live.get("differing")
    live_keys = "too many" if differing is None else sum(len(k) for k in differing.values())
    return (
        f"| verification: live rows compared in ms, keys differing live; under the fence "
        f"mode, rows rechecked | {live.get('rows', '?')} in {live.get('ms', '?')} ms, "
        f"{live_keys}; {progress.get('verify_mode', '?')}, "
        f"{progress.get('rechecked_rows', '?')} (ms: {progress.get('verify_parts_ms', '?')}) "
        "| | |"
    )


def _ms(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return (
        f"{value * 1000:,.0f} ms".replace(",", " ") if value >= 0.0995 else f"{value * 1000:.1f} ms"
    )


def _verdict(ok: bool) -> str:
    return "met" if ok else "missed"


@dataclass(frozen=True)
class Window:
    label: str
    start: float
    end: float

    def holds(self, t: float) -> bool:
        return self.start <= t < self.end


def _latencies(rows: Sequence[Sequence[Any]], window: Window, start: int, end: int) -> list[float]:
    return [r[end] - r[start] for r in rows if window.holds(r[start])]


def longest_gap(acks: Sequence[float], window: Window) -> float:
    """The longest time within ``window`` in which no write was acknowledged."""
    inside = sorted(t for t in acks if window.holds(t))
    edges = [window.start, *inside, window.end]
    return max(b - a for a, b in itertools.pairwise(edges))


@dataclass
class Report:
    args: argparse.Namespace
    setup: Setup
    move: MoveRun
    result: LoadResult
    checks: Checks
    before: Window
    during: Window
    after: Window

    def ok(self) -> bool:
        return (
            self.move.info.state is MoveState.DONE
            and not self.checks.lost
            and not self.checks.problems
            and not self.checks.replays_wrong
        )

    def move_table(self) -> str:
        info, move, result = self.move.info, self.move, self.result
        writes = [w for w in result.writes if w[7] in (200, 201)]
        during = _latencies(writes, self.during, 2, 3)
        p50, p99 = percentile(during, 50), percentile(during, 99)
        total = move.seconds
        rows = [
            "| figure | value | target | |",
            "|---|---:|---:|---|",
            f"| move state | {info.state.value}"
            + (f" ({info.error})" if info.error else "")
            + " | done | "
            + _verdict(info.state is MoveState.DONE)
            + " |",
            f"| total move time (plan → done) | {total:.1f} s | < {TARGET_TOTAL_S:g} s "
            f"| {_verdict(total < TARGET_TOTAL_S)} |",
        ]
        switched = move.seen.get(MoveState.SWITCHED)
        if switched is not None:
            rows.append(
                f"| until the switch (plan → switched) | {switched - move.started:.1f} s | | |"
            )
        freeze_verdict = (
            "n/a" if info.freeze_ms is None else _verdict(info.freeze_ms < TARGET_FREEZE_MS)
        )
        progress = info.progress
        parts = ("fence_ms", "fenced_catch_up_ms", "verify_ms")
        split = " / ".join(str(progress.get(k, "?")) for k in parts)
        rows += [
            f"| write freeze, as the mover measured it (`freeze_ms`) | {info.freeze_ms} ms "
            f"| < 1 s | {freeze_verdict} |",
            f"| of which fence / fenced catch-up / verify | {split} ms | | |",
            _verification_row(progress),
            f"| writes started during the move, p50 as writers saw it | {_ms(p50)} "
            f"| < 1 s | {_verdict(p50 < TARGET_FREEZE_MS / 1000)} |",
            f"| writes started during the move, p99 | {_ms(p99)} | < 1 s "
            f"| {_verdict(p99 < TARGET_FREEZE_MS / 1000)} |",
            f"| writes started during the move, max | {_ms(max(during, default=math.nan))} | | |",
        ]
        if move.freeze is not None:
            begin, end = move.freeze
            caught = [w[3] - w[2] for w in writes if w[2] < end and w[3] > begin]
            rows.append(
                f"| writes in flight during the freeze: count, p50, max | {len(caught)}, "
                f"{_ms(percentile(caught, 50))}, {_ms(max(caught, default=math.nan))} | | |"
            )
        acks = [w[3] for w in writes]
        rows += [
            f"| longest time without an acknowledged write, during the move "
            f"| {_ms(longest_gap(acks, self.during))} | | |",
            f"| longest time without an acknowledged write, before the move "
            f"| {_ms(longest_gap(acks, self.before))} | | |",
            f"| 503 answers during the run (each retried) | {sum(w[5] for w in result.writes)} "
            "| | |",
            f"| writes sent again after no answer (connection errors) "
            f"| {sum(w[6] for w in result.writes)} | | |",
            f"| writes acknowledged / not acknowledged | {len(writes)} / "
            f"{len(result.writes) - len(writes)} | | |",
            f"| acknowledged contacts read back through the API | {self.checks.read_back} | | |",
            f"| acknowledged writes lost | {len(self.checks.lost)} | 0 "
            f"| {_verdict(not self.checks.lost)} |",
            f"| acknowledged creates replayed under their Idempotency-Key, same contact "
            f"| {self.checks.replays - len(self.checks.replays_wrong)} / {self.checks.replays} "
            f"| all | {_verdict(not self.checks.replays_wrong)} |",
        ]
        return "\n".join(rows)

    def states_table(self) -> str:
        seen = self.move.seen
        rows = ["| state | from (s after plan) | lasted |", "|---|---:|---:|"]
        ordered = [s for s in STATES if s in seen]
        for state, following in zip(ordered, [*ordered[1:], None], strict=True):
            begin = seen[state] - self.move.started
            lasted = "" if following is None else f"{seen[following] - seen[state]:.2f} s"
            rows.append(f"| {state.value} | {begin:.2f} | {lasted} |")
        return "\n".join(rows)

    def latency_table(self) -> str:
        rows = [
            "| requests | before: n, p50, p99 | during the move: n, p50, p99 "
            "| p99 during / before |",
            "|---|---:|---:|---:|",
        ]
        writes = [w for w in self.result.writes if w[7] in (200, 201)]
        groups: list[tuple[str, list[list[Any]], int, int]] = [
            (f"writes, moved tenant ({SRC} → {DST})", writes, 2, 3)
        ]
        for shard_id in (SRC, DST):
            reads = [r for r in self.result.reads if r[0] == shard_id and r[3] == 200]
            groups.append((f"reads, neighbour on {shard_id}", reads, 1, 2))
        for label, rows_, s, e in groups:
            cells = []
            p99s = []
            for window in (self.before, self.during):
                lat = _latencies(rows_, window, s, e)
                p99s.append(percentile(lat, 99))
                cells.append(f"{len(lat)}, {_ms(percentile(lat, 50))}, {_ms(p99s[-1])}")
            ratio = p99s[1] / p99s[0] if p99s[0] and not math.isnan(p99s[0]) else math.nan
            rows.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio:.2f} |")
        failed = sum(1 for r in self.result.reads if r[3] != 200)
        rows.append(f"\nNeighbour reads not answered 200: {failed}.")
        return "\n".join(rows)

    def environment(self) -> list[str]:
        a, s = self.args, self.setup
        return [
            f"Date: {a.started:%Y-%m-%d %H:%M} UTC; commit {_git_revision()}",
            f"Machine: {os.cpu_count()} vCPU {_cpu_model()}; Python "
            f"{platform.python_version()}; load average before the run (1 minute; other "
            f"users share the machine) {a.load_before:.2f}",
            f"Servers: three private PostgreSQL clusters (control plane; {SRC} in {REGIONS[SRC]}"
            f", {DST} in {REGIONS[DST]}, wal_level logical; fsync "
            f"{'off' if a.no_fsync else 'on'}), Meridian on uvicorn with {a.workers} worker(s) "
            f"(record and list caches off), Redis {a.redis_url or 'none'}, the load process "
            "and this one: all on this machine",
            f"Data: moved tenant {len(s.moved.contact_ids):,} contacts (encrypted email and "
            f"phone) + {s.activities:,} activities on {SRC}; {a.neighbours} neighbour tenant(s) "
            f"per shard with {a.neighbour_contacts:,} contacts each; seeded in {s.seconds:.0f} s",
            f"Load: {a.writers} writers on the moved tenant (half creates, half updates, "
            + (f"{a.write_rate:g}/s each" if a.write_rate else "each as fast as answered")
            + f"; a 503 retried after {a.retry_delay:g} s); by-id reads of one neighbour "
            f"per shard, {a.read_rate:g}/s each by {a.readers} paced readers; {a.before:g} s "
            f"before the move (the first {self.before.start - a.load_started:.1f} s not "
            f"counted), {a.after:g} s after",
        ]

    def text(self) -> str:
        problems = [*self.checks.problems, *self.checks.lost[:20], *self.checks.replays_wrong[:5]]
        unexpected = self.result.unexpected
        lines = [
            "\n".join(f"- {line}" for line in self.environment()),
            "",
            self.move_table(),
            "",
            self.states_table(),
            "",
            self.latency_table(),
        ]
        if unexpected:
            lines += ["", f"Writes answered otherwise ({len(unexpected)}):"]
            lines += [f"  {u}" for u in unexpected[:10]]
        if self.checks.transport_errors:
            lines += ["", "Check requests without an answer, sent again:"]
            lines += [f"  {e}" for e in self.checks.transport_errors[:10]]
        if self.checks.newer:
            lines += [
                "",
                f"Contacts at a later version than acknowledged (an unanswered write applied): "
                f"{self.checks.newer}",
            ]
        if problems:
            lines += ["", "PROBLEMS:", *(f"  {p}" for p in problems)]
        return "\n".join(lines)


# -- the run --------------------------------------------------------------------------


async def measure(
    args: argparse.Namespace,
    servers: Mapping[str, LocalCluster],
    setup: Setup,
    base_url: str,
    folder: Path,
) -> Report:
    plan = LoadPlan(
        base_url=base_url,
        token=setup.moved.token,
        seeded=[str(c) for c in setup.moved.contact_ids],
        readers={
            shard_id: (t.token, [str(c) for c in t.contact_ids])
            for shard_id in (SRC, DST)
            for t in [next(n for n in setup.neighbours if n.shard_id == shard_id)]
        },
        writers=args.writers,
        write_rate=args.write_rate,
        readers_per_tenant=args.readers,
        read_rate=args.read_rate,
        retry_delay=args.retry_delay,
    )
    # The runtime whose directory.invalidate the mover calls: built before the load, so
    # its start-up is not part of what is measured.
    runtime = await Runtime.start(setup.settings)
    load = LoadProcess(plan, folder)
    try:
        await load.start()
        args.load_started = time.monotonic()
        print(f"load running; the move starts in {args.before:g} s", flush=True)
        await asyncio.sleep(args.before)
        print("moving", flush=True)
        move = await drive_move(runtime, setup.moved.id, DST)
        print(
            f"  {move.info.state.value} in {move.seconds:.1f} s, freeze {move.info.freeze_ms} ms",
            flush=True,
        )
        await asyncio.sleep(args.after)
        stopped = time.monotonic()
        result = await load.stop()
        print(f"load stopped; reading back {len(result.acked):,} acknowledged contacts", flush=True)
        checks = Checks()
        await read_back(base_url, setup.moved.token, result, checks)
        await check_shards(servers, runtime, setup, result, checks)
    finally:
        await load.kill()
        await runtime.stop()
    # The first second (or a quarter of --before) warms the server: not counted.
    warm = min(1.0, args.before / 4)
    return Report(
        args,
        setup,
        move,
        result,
        checks,
        before=Window("before", args.load_started + warm, move.started),
        during=Window("during", move.started, move.ended),
        after=Window("after", move.ended, stopped),
    )


def command(argv: Sequence[str]) -> str:
    return shlex.join([".venv/bin/python", "-m", "loadtests.bench.move", *argv])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load_plan is not None and args.load_out is not None:
        write_result(args.load_out, asyncio.run(_load_main(read_plan(args.load_plan))))
        return 0
    args.started = datetime.now(UTC)
    args.load_before = os.getloadavg()[0]
    print(f"starting three private PostgreSQL servers ({SRC}, {DST}, control plane)", flush=True)
    with (
        private_servers(fsync=not args.no_fsync) as servers,
        tempfile.TemporaryDirectory(prefix="meridian-bench-move-") as tmp,
    ):
        folder = Path(tmp)
        print(
            f"seeding: {args.contacts:,} contacts and their activities on {SRC}, "
            f"{args.neighbours} neighbour(s) per shard",
            flush=True,
        )
        setup = asyncio.run(prepare_platform(servers, args))
        print(f"  seeded in {setup.seconds:.1f} s", flush=True)
        env = {
            **server_env(setup.settings),
            **caches(on=False),
        }
        port = free_port()
        argv_ = meridian_argv(port, args.workers)
        try:
            with Server("meridian-move", argv_, env, port, "/readyz", folder) as server:
                report = asyncio.run(measure(args, servers, setup, server.base_url, folder))
        except Exception:
            for log in sorted(folder.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text()[-4000:]}", file=sys.stderr)
            raise
    print()
    print(f"Command: `{command(sys.argv[1:] if argv is None else argv)}`")
    print()
    print(report.text())
    if not report.ok():
        print("\nFAILED: see PROBLEMS above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
