"""``meridian dev``: the whole platform on one machine, with embedded defaults.

Unless MERIDIAN_CONTROL_DSN names real servers, it runs a private PostgreSQL cluster (and
a private Redis when it can) under the data directory, migrates it, creates a platform
admin and a demo tenant on the first run (later runs reuse them), serves the API with
uvicorn, and on Ctrl-C / SIGTERM stops the API, then everything it started. The parts:
``postgres`` (private clusters), ``redis``, ``demo`` (the first run's content) and
``datadir`` (the data folder's files).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

import httpx
import uvicorn

from meridian.app import create_app
from meridian.operations import migrate_all, shard_databases
from meridian.settings import DEV_JSON_ENV, Settings, ShardConfig
from meridian.worker.main import RunningWorker, start_worker
from meridian_dev.datadir import (
    DataDir,
    DevError,
    Json,
    ensure_kek,
    exclusive,
    load_json,
    save_json,
    say,
    warn,
)
from meridian_dev.demo import (
    DEMO_SLUG,
    client_token,
    ensure_admin,
    ensure_demo_tenant,
    seed_demo_data,
)
from meridian_dev.postgres import LocalCluster, LocalPgError, PgEngine, free_port, port_is_free
from meridian_dev.redis import DevRedis, start_redis

OWNER_ROLE = "meridian_owner"  # owns the databases and tables, runs migrations
APP_ROLE = "meridian_app"  # what the API connects as: LOGIN NOBYPASSRLS, owns nothing
CONTROL_DB = "meridian_control"
SHARDS = (("us-1", "us", "meridian_shard_us_1"), ("eu-1", "eu", "meridian_shard_eu_1"))
DEFAULT_PG_PORT = 54329
# Logical WAL: tenant moves between the dev platform's shards (`meridian tenants move`)
# replicate the tenant's rows. A cluster adopted from a run that predates this keeps
# its level until it restarts; moves say so.
SERVER_SETTINGS = {"wal_level": "logical"}


class _Interrupted(BaseException):
    """SIGINT/SIGTERM outside the event loop (BaseException: nothing may swallow it)."""


# -- PostgreSQL ----------------------------------------------------------------------------


def _choose_cluster(paths: DataDir, state: Json, engine: PgEngine) -> LocalCluster:
    """The private cluster and its port: the saved one, a stable default, or a free one."""
    port = int(state.get("pg_port") or DEFAULT_PG_PORT)
    cluster = LocalCluster(paths.pg, port=port, engine=engine, settings=SERVER_SETTINGS)
    if cluster.is_running():
        # A previous run was killed before it could stop the server: adopt it.
        cluster = replace(cluster, port=cluster.running_port() or cluster.port)
        say(f"PostgreSQL already running in {paths.pg} on port {cluster.port}; reusing it")
    elif not port_is_free(cluster.port):
        new_port = free_port()
        if "pg_port" in state:
            warn(f"port {cluster.port} is taken; PostgreSQL moves to port {new_port}")
        cluster = replace(cluster, port=new_port)
    if state.get("pg_port") != cluster.port:
        state["pg_port"] = cluster.port
        save_json(paths.state, state)
    return cluster


def _check_engine(cluster: LocalCluster) -> None:
    """A cluster made by one PostgreSQL major version cannot be served by another."""
    made_by = cluster.data_major()
    if made_by is None or made_by == (major := cluster.binaries_major()):
        return
    other = "system" if cluster.engine == "embedded" else "embedded"
    raise DevError(
        f"{cluster.data_dir} holds a PostgreSQL {made_by} cluster, and the {cluster.engine} "
        f"binaries are PostgreSQL {major}. Run `meridian dev --postgres {other}` to keep "
        f"using it, or move {cluster.root} away to start afresh."
    )


def _start_postgres(cluster: LocalCluster) -> None:
    _check_engine(cluster)
    if cluster.initdb():
        say(f"created a PostgreSQL cluster in {cluster.root} ({cluster.engine} binaries)")
    if not cluster.is_running():
        say(f"starting PostgreSQL on 127.0.0.1:{cluster.port}")
        cluster.start()
    # A superuser on this private, loopback-only cluster: a tenant move creates a
    # subscription (PostgreSQL 15: superusers only) and reads every tenant's rows. A
    # production shard's admin DSN is a role the operator grants that to, or not.
    cluster.ensure_role(OWNER_ROLE, superuser=True)
    cluster.ensure_role(APP_ROLE, bypass_rls=False)
    for db in (CONTROL_DB, *(db for _, _, db in SHARDS)):
        if cluster.ensure_database(db, owner=OWNER_ROLE):
            say(f"created database {db}")


def _stop_postgres(cluster: LocalCluster) -> None:
    say("stopping PostgreSQL")
    try:
        cluster.stop("fast")
    except LocalPgError as exc:
        warn(f"PostgreSQL did not stop cleanly: {exc}")


def _own_kek(kek_file: Path) -> Json:
    """The dev platform's KEK file, unless the environment names a KEK (which then wins)."""
    if "MERIDIAN_KEK" in os.environ or "MERIDIAN_KEK_FILE" in os.environ:
        return {}
    return {"kek_file": kek_file}


def _embedded_settings(
    cluster: LocalCluster, redis_url: str | None, issuer: str, kek_file: Path
) -> Settings:
    return Settings(
        control_dsn=cluster.dsn(CONTROL_DB, APP_ROLE),
        control_admin_dsn=cluster.dsn(CONTROL_DB, OWNER_ROLE),
        shards=[
            ShardConfig(
                id=shard_id,
                region=region,
                dsn=cluster.dsn(db, APP_ROLE),
                admin_dsn=cluster.dsn(db, OWNER_ROLE),
            )
            for shard_id, region, db in SHARDS
        ],
        app_db_role=APP_ROLE,
        redis_url=redis_url,
        issuer=issuer,
        password_grant=True,  # first-party sign-in for local apps (off in production)
        # Webhook receivers of a local platform listen on this machine.
        webhook_allow_private_targets=True,
        **_own_kek(kek_file),
    )


def _configured_settings(redis_url: str | None, issuer: str, kek_file: Path) -> Settings:
    overrides: Json = {
        "redis_url": redis_url,
        "password_grant": True,
        "webhook_allow_private_targets": True,
    }
    if "MERIDIAN_ISSUER" not in os.environ:
        overrides["issuer"] = issuer
    return Settings(**overrides, **_own_kek(kek_file))


# -- bootstrap: migrations, then the first run's content (meridian_dev.demo) ---------------


@dataclass(frozen=True)
class _Bootstrapped:
    admin: Json
    demo: Json | None
    demo_user: Json | None
    shards: dict[str, Json]  # id -> region, dsn (app role), admin_dsn (owner)


async def _bootstrap(settings: Settings, paths: DataDir, state: Json) -> _Bootstrapped:
    say("applying migrations")
    await migrate_all(settings)
    creds = load_json(paths.credentials)
    # The real app, in process: onboarding and demo data take the same code paths as
    # any client's requests, and the server starts only when they are done.
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=settings.issuer) as http:
                admin = await ensure_admin(http, settings, creds, paths)
                admin_token = await client_token(http, admin)
                if admin_token is None:
                    raise DevError("the platform-admin client cannot get a token")
                admin_headers = {"Authorization": f"Bearer {admin_token}"}
                demo = await ensure_demo_tenant(http, admin_headers, creds, state, paths)
                if demo is not None:
                    await seed_demo_data(demo, state, creds, paths, http)
    finally:
        # The app's lifespan froze the heap; this throwaway app's objects must not stay.
        gc.unfreeze()
    demo_user = creds.get("demo_user") if demo is not None else None
    return _Bootstrapped(admin, demo, demo_user, await shard_databases(settings))


# -- serving -------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Our loop's handlers drive shutdown. uvicorn's would re-raise the signal after
        # its shutdown and end the process before the databases are stopped.
        yield


def _display_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - mapping wildcard to loopback for URLs
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _write_dev_json(
    paths: DataDir,
    base_url: str,
    boot: _Bootstrapped,
    settings: Settings,
    cluster: LocalCluster | None,
) -> None:
    """What tools need to reach this platform: every `meridian` command finds it here
    (see meridian.settings.dev_platform_values), and the README's tour reads it with jq."""
    demo = boot.demo
    data: Json = {
        "base_url": base_url,
        "admin": {
            "client_id": boot.admin["client_id"],
            "client_secret": boot.admin["client_secret"],
        },
        "demo_tenant": (
            {
                "slug": demo["slug"],
                "client_id": demo["client_id"],
                "client_secret": demo["client_secret"],
            }
            if demo
            else None
        ),
        "demo_user": (
            {
                "tenant": DEMO_SLUG,
                "email": boot.demo_user["email"],
                "password": boot.demo_user["password"],
            }
            if boot.demo_user
            else None
        ),
        "databases": {
            "control": settings.control_dsn,
            "control_admin": settings.control_migrate_dsn,
            "shards": boot.shards,
        },
        "postgres": cluster.engine if cluster is not None else "configured",
        "redis_url": settings.redis_url,
        # Tools that write encrypted fields (meridian seed) need the same KEK.
        "kek_file": str(settings.kek_file) if settings.kek_file else None,
        "data_dir": str(paths.data),
    }
    paths.dev_json.parent.mkdir(exist_ok=True)
    save_json(paths.dev_json, data, private=True)


def _banner(
    base_url: str,
    boot: _Bootstrapped,
    cluster: LocalCluster | None,
    redis: DevRedis,
    paths: DataDir,
) -> str:
    admin, demo, user = boot.admin, boot.demo, boot.demo_user
    venv_bin = Path(sys.executable).parent
    lines = [
        "",
        "Meridian dev is running",
        f"  API             {base_url}",
        f"  API docs        {base_url}/docs  (Authorize with a client id and secret below)",
        f"  Token endpoint  {base_url}/oauth/token",
        f"  Platform admin  client_id={admin['client_id']}  client_secret={admin['client_secret']}",
    ]
    if demo:
        lines.append(
            f"  Demo tenant     {demo['slug']!r}  client_id={demo['client_id']}"
            f"  client_secret={demo['client_secret']}"
        )
    if user:
        lines.append(
            f"  Demo user       {user['email']}  password={user['password']}"
            f"  (tenant {DEMO_SLUG!r}, password grant)"
        )
    if cluster is not None:
        lines.append(
            f"  PostgreSQL      127.0.0.1:{cluster.port} ({cluster.engine} binaries, data in "
            f"{cluster.root}; superuser {cluster.superuser}, roles {OWNER_ROLE}, {APP_ROLE})"
        )
    else:
        lines.append("  PostgreSQL      configured (MERIDIAN_CONTROL_DSN)")
    lines += [
        f"  Redis           {redis.url or '-'} ({redis.label})",
        "  Events          "
        + (
            "worker running here: GET /v1/events, GET /v1/stream, /v1/webhooks"
            if redis.url
            else "no worker (needs Redis): GET /v1/events only"
        ),
        f"  Details         {paths.dev_json}  (credentials also in {paths.credentials})",
        f"  CLI             {venv_bin / 'meridian'} --help  (or `source {venv_bin / 'activate'}`"
        " first; commands find this platform through the file above)",
    ]
    if demo:
        lines += [
            "Try it (needs curl and jq):",
            f"  TOKEN=$(curl -s -u {demo['client_id']}:{demo['client_secret']} "
            f"-d grant_type=client_credentials {base_url}/oauth/token | jq -r .access_token)",
            f'  curl -s -H "Authorization: Bearer $TOKEN" {base_url}/v1/accounts',
        ]
    lines += ["Press Ctrl-C to stop.", ""]
    return "\n".join(lines)


async def _serve(
    settings: Settings,
    host: str,
    port: int,
    paths: DataDir,
    state: Json,
    cluster: LocalCluster | None,
    redis: DevRedis,
) -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    server: _Server | None = None
    worker: RunningWorker | None = None

    def on_signal(sig: signal.Signals) -> None:
        if server is None:
            main.cancel()  # still bootstrapping
        elif server.should_exit and sig == signal.SIGINT:
            server.force_exit = True  # a second Ctrl-C: do not wait for open connections
        else:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        boot = await _bootstrap(settings, paths, state)
        base_url = f"http://{_display_host(host)}:{port}"
        _write_dev_json(paths, base_url, boot, settings, cluster)
        server = _Server(
            uvicorn.Config(
                create_app(settings),
                host=host,
                port=port,
                log_level="info",
                timeout_graceful_shutdown=5,
            )
        )
        serving = asyncio.create_task(server.serve())
        ready = asyncio.create_task(server.ready.wait())
        await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if server.started:
            if settings.redis_url:
                # The event worker (relay, webhooks, projections, sagas) in this
                # process, so webhooks and the live stream work from the first run.
                worker = await start_worker(settings)
            say(_banner(base_url, boot, cluster, redis, paths))
        await serving
        if not server.started:
            raise DevError("the API did not start (see the log above)")
    except asyncio.CancelledError:
        say("interrupted; shutting down")
    finally:
        if worker is not None:
            await worker.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            # Stopping now: a second signal must not cut the databases' shutdown short.
            signal.signal(sig, signal.SIG_IGN)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted(signum)


def run_dev(host: str, port: int, data_dir: Path, postgres: PgEngine | None = None) -> None:
    """Run the platform until Ctrl-C / SIGTERM; raises DevError for problems to report.

    ``postgres`` picks the binaries of the private cluster: ``embedded`` (the pgserver
    wheel's) or ``system``; by default, whichever made the data folder's cluster, else
    ``embedded``.
    """
    # This run writes the dev.json that other commands read; it never reads one.
    os.environ.pop(DEV_JSON_ENV, None)
    paths = DataDir(data_dir.resolve())
    paths.data.mkdir(parents=True, exist_ok=True)
    if ":" not in host and not port_is_free(port, host or "0.0.0.0"):  # noqa: S104
        raise DevError(f"{host}:{port} is already in use; pick another port with --port")
    issuer = f"http://{_display_host(host)}:{port}"
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, _raise_interrupted)
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(exclusive(paths.lock))
        state = load_json(paths.state)
        cluster: LocalCluster | None = None
        if os.environ.get("MERIDIAN_CONTROL_DSN"):
            say("using the configured servers (MERIDIAN_CONTROL_DSN)")
        else:
            engine: PgEngine = postgres or state.get("pg_engine") or "embedded"
            cluster = _choose_cluster(paths, state, engine)
            stack.callback(_stop_postgres, cluster)  # before starting: a failure stops it too
            _start_postgres(cluster)
            if state.get("pg_engine") != engine:
                state["pg_engine"] = engine
                save_json(paths.state, state)
        redis = start_redis(paths)
        stack.callback(redis.stop)
        # `meridian keys rotate-kek` on this platform records the KEK file it moved to.
        kek_file = Path(state["kek_file"]) if state.get("kek_file") else ensure_kek(paths.kek)
        settings = (
            _embedded_settings(cluster, redis.url, issuer, kek_file)
            if cluster is not None
            else _configured_settings(redis.url, issuer, kek_file)
        )
        asyncio.run(_serve(settings, host, port, paths, state, cluster, redis))
    except _Interrupted:
        say("interrupted; shutting down")
    except LocalPgError as exc:
        raise DevError(str(exc)) from exc
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # see _serve: let the shutdown finish
        try:
            stack.close()  # Redis, then PostgreSQL, then the lock
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


__all__ = ["DevError", "run_dev"]
