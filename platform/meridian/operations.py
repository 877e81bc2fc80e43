"""Operations shared by the CLI, ``meridian dev``, the seeder and benchmarks, and the
tests: migrations, the shard topology, platform-admin clients, signing keys, the KEK,
tenant data keys and deletion.

Each command of ``meridian.cli`` is one call into here; the CLI only declares the
commands, prints what these return and turns the errors a user can fix into one line.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import meridian.models  # noqa: F401 - every table in the shard metadata (re-encryption)
from meridian import runtime
from meridian.admin.moves import move_body, moves_admin, region_target, run_moves
from meridian.admin.schemas import MoveCreate, MoveRead
from meridian.admin.service import tenant_admin
from meridian.admin.wiring import admin_deps
from meridian.backups import sandbox
from meridian.backups import service as backups
from meridian.backups.archive import OperatorKey
from meridian.backups.wiring import backup_deps
from meridian.encryption import reencrypt as reencryption
from meridian.encryption.reencrypt import ReencryptResult, resolve_tenant
from meridian.errors import MeridianError
from meridian.migrate import upgrade
from meridian.oauth import keys as signing_keys
from meridian.oauth.clients import NewClient, create_client
from meridian.principal import SCOPE_ADMIN
from meridian.runtime import Runtime
from meridian.settings import KeyConfigError, Settings, get_settings
from sharding import citus
from sharding.balance import PlannedMove, plan_rebalance, tenant_sizes
from sharding.engine import ShardEngine, agreed_engine, asyncpg_dsn, detect_engine_at
from sharding.models import MoveState, Shard
from sharding.mover import MoveBusyError, MoveError, MoveInfo
from sharding.registry import upsert_shard
from tenancy.context import TenantContext
from tenancy.keyring import KeyUnavailable, TenantKeyring
from tenancy.models import DirectoryEntry, Tenant

# What an operation that runs with a started runtime raises for a problem the user can
# fix (a tenant that does not exist, a KEK that is missing or does not unwrap, ...).
RUNTIME_ERRORS: tuple[type[Exception], ...] = (
    KeyConfigError,
    KeyUnavailable,
    LookupError,
    MeridianError,
    MoveError,
)
# What the KEK's re-wrap raises when the configured KEKs do not fit the stored keys.
KEK_ERRORS: tuple[type[Exception], ...] = (KeyConfigError, KeyUnavailable)

T = TypeVar("T")


@contextlib.asynccontextmanager
async def _shard_admin(
    control: AsyncEngine, shard_id: str, admin_dsn: str | None = None
) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the shard as ``admin_dsn`` (default: its recorded admin DSN), for
    the operations that handle a shard's tables directly. LookupError: no such shard."""
    async with control.connect() as conn:
        recorded = await conn.scalar(select(Shard.admin_dsn).where(Shard.id == shard_id))
    if recorded is None:
        raise LookupError(f"no shard {shard_id!r} in the topology")
    shard = await asyncpg.connect(asyncpg_dsn(admin_dsn or recorded), timeout=10.0)
    try:
        yield shard
    finally:
        await shard.close()


@contextlib.asynccontextmanager
async def _control(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """A short-lived engine on the control plane as its owner, for one operation."""
    engine = create_async_engine(settings.control_migrate_dsn)
    try:
        yield engine
    finally:
        await engine.dispose()


def _isoformat(row: dict[str, Any]) -> dict[str, object]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


# -- migrations and shards -----------------------------------------------------------------


async def migrate_all(settings: Settings) -> list[str]:
    """Control plane first, then every registered shard; returns the shard ids done."""
    await upgrade("control", settings.control_migrate_dsn, app_role=settings.app_db_role)
    await register_shards(settings)
    shards = await shard_databases(settings)
    for shard in shards.values():
        await upgrade("shard", shard["admin_dsn"], app_role=settings.app_db_role)
    return list(shards)


async def add_shard(
    settings: Settings,
    *,
    shard_id: str,
    region: str,
    dsn: str,
    admin_dsn: str | None = None,
    capacity: int = 1000,
    dedicated: bool | None = None,
    engine: ShardEngine | str | None = None,
) -> ShardEngine:
    """What `meridian shards add` does: find the engine the shard's database runs, migrate
    it (as its owner), then register it in the topology, so no instance sees a shard
    without its tables. Returns the engine recorded: the one detected, which ``engine``
    (when given) must name, else ``sharding.engine.EngineMismatchError`` and nothing is
    done."""
    recorded = agreed_engine(shard_id, engine, await detect_engine_at(admin_dsn or dsn))
    await upgrade("shard", admin_dsn or dsn, app_role=settings.app_db_role)
    async with _control(settings) as control, control.begin() as conn:
        await upsert_shard(
            conn,
            shard_id=shard_id,
            region=region,
            dsn=dsn,
            admin_dsn=admin_dsn or dsn,
            capacity=capacity,
            dedicated=dedicated,
            engine=recorded,
        )
    return recorded


async def register_shards(settings: Settings) -> None:
    """Register (or update) the shards the settings name (MERIDIAN_SHARDS, a dev.json)."""
    if not settings.shards:
        return
    async with _control(settings) as engine:
        await runtime.register_shards(engine, settings)


async def shard_databases(settings: Settings) -> dict[str, dict[str, str]]:
    """Every registered shard's region and databases (``dsn`` as the app role,
    ``admin_dsn`` as the owner), by id in id order."""
    async with _control(settings) as engine, engine.connect() as conn:
        rows = (
            await conn.execute(
                select(Shard.id, Shard.region, Shard.dsn, Shard.admin_dsn).order_by(Shard.id)
            )
        ).all()
    return {r.id: {"region": r.region, "dsn": r.dsn, "admin_dsn": r.admin_dsn} for r in rows}


async def list_shards(settings: Settings) -> list[dict[str, object]]:
    """The shard topology with each shard's tenant count, in id order."""
    stmt = (
        select(
            Shard.id,
            Shard.region,
            Shard.state,
            Shard.capacity,
            Shard.dedicated,
            Shard.engine,
            func.count(DirectoryEntry.tenant_id).label("tenant_count"),
        )
        .outerjoin(DirectoryEntry, DirectoryEntry.shard_id == Shard.id)
        .group_by(Shard.id)
        .order_by(Shard.id)
    )
    async with _control(settings) as engine, engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(stmt)).mappings()]


async def distribute_shard(
    settings: Settings, shard_id: str, *, admin_dsn: str | None = None
) -> dict[str, object]:
    """What `meridian shards distribute` does: distributes every tenant table of a
    PostgreSQL shard whose database runs on a Citus coordinator, rows in place
    (``sharding.citus.distribute_tables``: resumable, refuses what it cannot do safely),
    as ``admin_dsn`` (default: the shard's recorded one), then records the shard's
    engine as citus. Raises LookupError for an unknown shard and
    ``sharding.citus.CitusAdminError`` when it refuses."""
    async with _control(settings) as engine, _shard_admin(engine, shard_id, admin_dsn) as conn:
        tables = await citus.distribute_tables(conn)
    # Last, so an instance never treats a half-converted shard as Citus; instances
    # rebuild the shard's pools when they see the new engine (topology refresh).
    async with _control(settings) as engine, engine.begin() as control_conn:
        await control_conn.execute(
            update(Shard).where(Shard.id == shard_id).values(engine=ShardEngine.CITUS.value)
        )
    return {
        "shard": shard_id,
        "engine": ShardEngine.CITUS.value,
        "tables": [
            {
                "table": t.table,
                "rows_before": t.rows_before,
                "rows_after": t.rows_after,
                "distributed_now": t.distributed_now,
                "seconds": round(t.seconds, 3),
            }
            for t in tables
        ],
    }


# -- clients and signing keys --------------------------------------------------------------


async def create_admin_client(settings: Settings, name: str = "platform admin") -> NewClient:
    """A platform-admin OAuth client (scope platform:admin); its secret exists only here."""
    async with _control(settings) as engine, engine.begin() as conn:
        return await create_client(conn, name=name, scope=SCOPE_ADMIN, tenant_id=None)


def _key_timing(settings: Settings) -> tuple[float, timedelta]:
    # A next key signs only once every verifier has it: clients cache the JWKS for
    # jwks_max_age, our own instances reload keys every key_refresh_interval.
    delay = max(settings.jwks_max_age, settings.key_refresh_interval)
    window = signing_keys.retired_window(settings.access_token_ttl, settings.key_refresh_interval)
    return delay, window


async def rotate_signing_key(settings: Settings, *, activate_only: bool) -> dict[str, object]:
    """One step of the signing key's rotation (publish a next key, or promote it); raises
    ``meridian.oauth.keys.KeyRotationError`` when the step would be unsafe now."""
    delay, window = _key_timing(settings)
    async with _control(settings) as engine:
        done = await signing_keys.rotate(
            engine, activation_delay=delay, window=window, activate_only=activate_only
        )
    return _isoformat(asdict(done))


async def list_signing_keys(settings: Settings) -> list[dict[str, object]]:
    """The signing keys: state, when published or retired, and until when."""
    delay, window = _key_timing(settings)
    async with _control(settings) as engine:
        keys = await signing_keys.list_keys(engine, activation_delay=delay, window=window)
    return [_isoformat(asdict(key)) for key in keys]


async def rotate_kek(settings: Settings) -> dict[str, object]:
    """Re-wrap every tenant data key under the primary KEK; raises one of ``KEK_ERRORS``
    when the configured KEKs cannot do it."""
    async with _control(settings) as engine:
        done = await TenantKeyring(engine, settings.key_provider()).rewrap_all()
    return {"rewrapped": done, "primary": settings.key_provider().primary_id}


# -- tenants -------------------------------------------------------------------------------


async def with_runtime(settings: Settings, work: Callable[[Runtime], Awaitable[T]]) -> T:
    """Run ``work`` with a started runtime (engines, keyring, cache), stopped after."""
    rt = await Runtime.start(settings)
    try:
        return await work(rt)
    finally:
        await rt.stop()


@dataclass(frozen=True, slots=True)
class TenantKeyRotated:
    tenant: TenantContext
    active_version: int
    # Seconds every instance needs to see the new version, and so to write with it.
    propagation: float

    def summary(self) -> dict[str, object]:
        return {"tenant": str(self.tenant.tenant_id), "active_version": self.active_version}


async def rotate_tenant_key(rt: Runtime, tenant: str) -> TenantKeyRotated:
    """A new data-key version for the tenant (id or slug), published first and activated
    once every API instance has seen it, so no search misses a row."""
    ctx = await resolve_tenant(rt, tenant)
    # Margin over the instances' cache of key versions (and of the active one).
    wait = rt.settings.key_versions_ttl + 1.0
    version = await reencryption.rotate_tenant_key(rt, ctx.tenant_id, propagation=wait)
    return TenantKeyRotated(ctx, version, wait)


async def reencrypt_tenant(
    rt: Runtime, tenant: TenantContext | str, *, batch_size: int, wait: float = 0.0
) -> ReencryptResult:
    """Move the tenant's rows still on old key versions to the active one (resumable),
    with a progress bar per table, then retire the versions no row uses. ``wait``: seconds
    to let every instance switch its writes to the active version first."""
    if wait > 0:
        await asyncio.sleep(wait)
    ctx = tenant if isinstance(tenant, TenantContext) else await resolve_tenant(rt, tenant)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    ) as bar:
        tasks: dict[str, Any] = {}

        def advance(table: str, done: int, total: int) -> None:
            if table not in tasks:
                tasks[table] = bar.add_task(f"re-encrypting {table}", total=total)
            bar.update(tasks[table], completed=done, total=max(total, done))

        return await reencryption.reencrypt(rt, ctx, batch_size=batch_size, progress=advance)


def reencrypt_summary(result: ReencryptResult) -> dict[str, object]:
    return {
        "active_version": result.active_version,
        "rows": result.rows,
        "retired_versions": result.retired,
        "seconds": round(result.seconds, 3),
    }


async def delete_tenant(rt: Runtime, tenant: str) -> dict[str, object]:
    """Crypto-shred the tenant (id or slug): destroy its data keys, then mark it deleted."""
    ctx = await resolve_tenant(rt, tenant)
    row = await tenant_admin.delete(admin_deps(rt), ctx.tenant_id)
    return {"tenant": str(row["id"]), "status": row["status"]}


async def export_tenant_archive(
    rt: Runtime, tenant: str, out: Path, key: OperatorKey
) -> dict[str, object]:
    """What `meridian tenants export` does: the tenant (id or slug) into the archive
    ``out``, its data keys sealed under the operator's ``key`` (docs/backups.md)."""
    return await backups.export_tenant(backup_deps(rt), tenant, out, key)


async def import_tenant_archive(
    rt: Runtime,
    archive: Path,
    key: OperatorKey,
    *,
    shard: str | None,
    as_new: str | None = None,
    name: str | None = None,
) -> dict[str, object]:
    """What `meridian tenants import` does: the archived tenant restored as itself, or
    with ``as_new`` as a new tenant of that slug beside it (a sandbox copy, named
    ``name``), onto ``shard`` or where placement puts it."""
    if as_new is not None:
        return await sandbox.import_as_new(
            backup_deps(rt), archive, key, slug=as_new, name=name, shard=shard
        )
    return await backups.import_tenant(backup_deps(rt), archive, key, shard=shard)


async def isolate_tenant(
    rt: Runtime,
    tenant: str,
    *,
    to_node: str | None = None,
    admin_dsn: str | None = None,
    mode: citus.TransferMode = citus.TransferMode.ONLINE,
) -> dict[str, object]:
    """What `meridian tenants isolate` does: the tenant (id or slug) gets a shard group
    of its own inside its Citus shard, moved to ``to_node`` when given (see
    ``TenantAdminService.isolate``); where the group was and is, and each step's time."""
    ctx = await resolve_tenant(rt, tenant)
    done = await tenant_admin.isolate(
        admin_deps(rt), ctx.tenant_id, node=to_node, admin_dsn=admin_dsn, mode=mode
    )
    return {**done, "tenant_id": str(done["tenant_id"])}


# -- tenant moves ---------------------------------------------------------------------------

MoveAction = Callable[[], Coroutine[Any, Any, MoveInfo]]


def _move_json(body: dict[str, Any]) -> dict[str, Any]:
    """A move as the admin API answers it (``MoveRead``), ready for json.dumps."""
    return MoveRead.model_validate(body).model_dump(mode="json")


async def follow_move(rt: Runtime, move_id: UUID, drive: MoveAction) -> dict[str, Any]:
    """``drive`` (running, resuming or cancelling the move) in this process, with a
    progress bar of its state and rows copied; the move as ``MoveRead`` shows it. When
    another process drives the move already (an API instance's sweep may take it up
    between two commands), it is followed to its end instead."""
    mover = rt.moves.mover
    running: asyncio.Task[MoveInfo] | None = asyncio.create_task(drive())
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        # On stderr: stdout carries the command's JSON.
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("planned", total=None)
        while True:
            if running is None:
                await asyncio.sleep(0.5)
            else:
                await asyncio.wait({running}, timeout=0.5)
                if running.done() and isinstance(running.exception(), MoveBusyError):
                    running = None
            info = await mover.get_move(move_id)
            shown = move_body(info)
            lag = f", {info.lag_bytes} B behind" if info.lag_bytes else ""
            ending = f" -> {info.rollback_to.value}" if info.rollback_to else ""
            bar.update(
                task,
                description=f"{info.state.value}{ending}{lag}",
                completed=shown["rows_copied"],
                total=shown["rows_total"] or None,
            )
            if (running is None and info.finished) or (running is not None and running.done()):
                break
    if running is not None:
        await running  # its error, if it stopped with one
    return _move_json(move_body(await mover.get_move(move_id)))


async def move_tenant(
    rt: Runtime, tenant: str, *, to: str | None, region: str | None, wait: bool
) -> dict[str, Any]:
    """What `meridian tenants move` does: plan the move of the tenant (id or slug) to a
    shard or region, and drive it here when ``wait`` (else an API instance's sweep, or
    `meridian moves resume`, drives it)."""
    ctx = await resolve_tenant(rt, tenant)
    body = MoveCreate(target_shard_id=to, region=region)
    row, _ = await moves_admin.start(admin_deps(rt), ctx.tenant_id, body, None, drive=False)
    if not wait:
        return _move_json(row)
    move_id = row["id"]
    return await follow_move(rt, move_id, lambda: rt.moves.mover.run_move(move_id))


async def list_moves(
    rt: Runtime, *, tenant: str | None, state: MoveState | None, limit: int
) -> list[dict[str, Any]]:
    tenant_id = (await resolve_tenant(rt, tenant)).tenant_id if tenant else None
    found = await rt.moves.mover.list_moves(tenant_id=tenant_id, state=state, limit=limit)
    return [_move_json(move_body(m)) for m in found]


async def show_move(rt: Runtime, move_id: UUID) -> dict[str, Any]:
    return _move_json(await moves_admin.get(admin_deps(rt), move_id))


async def resume_move(rt: Runtime, move_id: UUID) -> dict[str, Any]:
    await moves_admin.get(admin_deps(rt), move_id)  # 404 as a one-line error
    return await follow_move(rt, move_id, lambda: rt.moves.mover.run_move(move_id))


async def cancel_move(rt: Runtime, move_id: UUID) -> dict[str, Any]:
    mover = rt.moves.mover

    async def cancel() -> MoveInfo:
        # Recorded first: whoever drives the move (here, or another process followed
        # to its end) rolls it back.
        await mover.request_cancel(move_id)
        return await mover.run_move(move_id)

    await moves_admin.get(admin_deps(rt), move_id)
    return await follow_move(rt, move_id, cancel)


async def _run_planned(
    rt: Runtime, planned: list[PlannedMove], parallel: int
) -> list[dict[str, Any]]:
    """Run planned moves here, ``parallel`` at a time, printing one line as each ends."""

    def report(p: PlannedMove, result: MoveInfo | Exception) -> None:
        end = result.state.value if isinstance(result, MoveInfo) else f"not moved: {result}"
        print(f"tenant {p.tenant_id}: {p.source_shard_id} -> {p.target_shard_id}: {end}")

    results = await run_moves(admin_deps(rt), planned, parallel=parallel, on_done=report)
    return [
        {
            "tenant_id": str(p.tenant_id),
            "from": p.source_shard_id,
            "to": p.target_shard_id,
            "rows": p.rows,
            "move_id": str(r.id) if isinstance(r, MoveInfo) else None,
            "state": r.state.value if isinstance(r, MoveInfo) else "not moved",
            "error": r.error if isinstance(r, MoveInfo) else str(r),
        }
        for p, r in zip(planned, results, strict=True)
    ]


async def drain_shard(rt: Runtime, shard_id: str, *, parallel: int) -> dict[str, Any]:
    """What `meridian shards drain` does: close the shard to new tenants, then move every
    tenant off it to the least-loaded active shard of its region, ``parallel`` at a
    time. Resumable: run it again after a failure (moved tenants are not there any more).
    Refuses, closing nothing, when the region has no other shard to take its tenants."""
    shards = await rt.reload_topology()
    shard = next((s for s in shards if s.id == shard_id), None)
    if shard is None:
        raise LookupError(f"no shard {shard_id!r}")
    async with rt.control.connect() as conn:
        held = (
            (
                await conn.execute(
                    select(DirectoryEntry.tenant_id)
                    .join(Tenant, Tenant.id == DirectoryEntry.tenant_id)
                    .where(DirectoryEntry.shard_id == shard_id, Tenant.status != "deleted")
                    .order_by(DirectoryEntry.tenant_id)
                )
            )
            .scalars()
            .all()
        )
    async with _shard_admin(rt.control, shard_id) as conn:
        sizes = await tenant_sizes(conn)
    # Planned as if the shard were closed already (it is, before the first move).
    others = [s for s in shards if s.id != shard_id]
    counts = await rt.tenant_counts()
    planned: list[PlannedMove] = []
    for tenant_id in held:
        try:
            target = region_target(others, counts, shard.region).id
        except MeridianError as exc:
            raise LookupError(
                f"the tenants of shard {shard_id} have nowhere to go: no other active shard "
                f"with room in region {shard.region!r} (`meridian shards add` one first)"
            ) from exc
        counts[target] = counts.get(target, 0) + 1
        planned.append(PlannedMove(tenant_id, shard_id, target, sizes.get(tenant_id, 0)))
    async with rt.control.begin() as conn:
        # Closed: placement, region moves and rebalances pass it by from now on.
        closing = update(Shard).where(Shard.id == shard_id, Shard.state == "active")
        await conn.execute(closing.values(state="closed"))
    await rt.reload_topology()
    moves = await _run_planned(rt, planned, parallel)
    left = sum(1 for m in moves if m["state"] != MoveState.DONE.value)
    return {"shard": shard_id, "state": "closed", "moves": moves, "tenants_left": left}


async def rebalance_plan(
    rt: Runtime, *, region: str | None, tolerance: float, max_moves: int
) -> list[PlannedMove]:
    """Per region, moves that even out the rows of its active shared shards."""
    shards = [
        s
        for s in await rt.reload_topology()
        if s.state == "active" and not s.dedicated and (region is None or s.region == region)
    ]
    async with rt.control.connect() as conn:
        placed = dict(
            (await conn.execute(select(DirectoryEntry.tenant_id, DirectoryEntry.shard_id))).all()
        )
    planned: list[PlannedMove] = []
    for in_region in sorted({s.region for s in shards}):
        loads: dict[str, dict[UUID, int]] = {}
        for shard in sorted(s.id for s in shards if s.region == in_region):
            async with _shard_admin(rt.control, shard) as conn:
                sizes = await tenant_sizes(conn)
            # Rows of tenants the directory places elsewhere (a move's leftovers) and of
            # deleted tenants stay where they are: only the shard's own tenants move.
            loads[shard] = {t: n for t, n in sizes.items() if placed.get(t) == shard}
        planned += plan_rebalance(loads, tolerance=tolerance, max_moves=max_moves)
    return planned


async def rebalance(
    rt: Runtime,
    *,
    region: str | None,
    tolerance: float,
    max_moves: int,
    dry_run: bool,
    parallel: int,
) -> dict[str, Any]:
    """What `meridian shards rebalance` does: the plan, and unless ``dry_run`` its moves."""
    planned = await rebalance_plan(rt, region=region, tolerance=tolerance, max_moves=max_moves)
    if dry_run:
        return {
            "dry_run": True,
            "moves": [
                {
                    "tenant_id": str(p.tenant_id),
                    "from": p.source_shard_id,
                    "to": p.target_shard_id,
                    "rows": p.rows,
                }
                for p in planned
            ],
        }
    return {"dry_run": False, "moves": await _run_planned(rt, planned, parallel)}


# -- read models ---------------------------------------------------------------------------


async def rebuild_projections(rt: Runtime, tenant: str | None) -> dict[str, object]:
    """What `meridian projections rebuild` does: every interaction summary of the tenant
    (id or slug), or of every tenant, computed again from the activities."""
    from meridian.projections.jobs import Platform, rebuild

    platform = Platform(rt.control, rt.directory, rt.router, rt.refresh_tenant)
    return await rebuild(platform, tenant)


async def rebuild_search(rt: Runtime, tenant: str | None) -> dict[str, object]:
    """What `meridian search rebuild` does: every search entry of the tenant (id or
    slug), or of every tenant, computed again from its records."""
    from meridian.search.service import Platform, rebuild

    platform = Platform(rt.control, rt.directory.load, rt.router, rt.refresh_tenant)
    return await rebuild(platform, tenant)


# -- diagnosis -----------------------------------------------------------------------------


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost cause: SQLAlchemy wraps the driver's error, which wraps the OS's."""
    seen = exc
    while True:
        inner = getattr(seen, "orig", None) or seen.__cause__
        if inner is None or inner is seen:
            return seen
        seen = inner


def unreachable_database(exc: BaseException) -> str | None:
    """One line saying what to do when a database cannot be reached, else None."""
    cause = _root_cause(exc)
    if isinstance(cause, asyncpg.InvalidCatalogNameError):
        problem = str(cause)
    elif isinstance(cause, (ConnectionError, TimeoutError, asyncpg.CannotConnectNowError)):
        problem = f"nothing answers ({cause.__class__.__name__})"
    elif isinstance(cause, OSError) and cause.errno is not None:
        problem = cause.strerror or str(cause)
    else:
        return None
    where = make_url(get_settings().control_migrate_dsn).render_as_string(hide_password=True)
    return (
        f"cannot reach the platform's databases ({problem}; control plane {where}). "
        "Start the dev platform with `scripts/dev` and run this from the same folder, or "
        "name its file with --dev-json / MERIDIAN_DEV_JSON, or set MERIDIAN_CONTROL_DSN "
        "and the other MERIDIAN_* settings of your servers."
    )
