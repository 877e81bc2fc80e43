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
import json
import os
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
from fastapi import FastAPI

from meridian.app import create_app
from meridian.bootstrap import create_admin_client, migrate_all
from meridian.localpg import LocalCluster, LocalPgError, free_port, port_is_free
from meridian.runtime import Runtime
from meridian.settings import Settings, ShardConfig
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


def _choose_cluster(paths: _Paths, state: Json) -> LocalCluster:
    """The private cluster and its port: the saved one, a stable default, or a free one."""
    cluster = LocalCluster(paths.pg, port=int(state.get("pg_port") or DEFAULT_PG_PORT))
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


def _start_postgres(cluster: LocalCluster) -> None:
    if cluster.initdb():
        say(f"created a PostgreSQL cluster in {cluster.root}")
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
        kek_file=kek_file,
    )


def _configured_settings(redis_url: str | None, issuer: str, kek_file: Path) -> Settings:
    overrides: Json = {"redis_url": redis_url, "password_grant": True}
    if "MERIDIAN_ISSUER" not in os.environ:
        overrides["issuer"] = issuer
    if "MERIDIAN_KEK" not in os.environ and "MERIDIAN_KEK_FILE" not in os.environ:
        overrides["kek_file"] = kek_file
    return Settings(**overrides)


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


def _start_redis(paths: _Paths) -> _Redis:
    configured = os.environ.get("MERIDIAN_REDIS_URL")
    if configured:
        return _Redis(configured, "configured (MERIDIAN_REDIS_URL)")
    exe = shutil.which("redis-server")
    if exe:
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
                raise DevError(f"redis-server did not start; see {log}")
            time.sleep(0.05)
        return _Redis(
            f"redis://127.0.0.1:{port}/0", f"private redis-server, data in {paths.redis}", proc
        )
    if _redis_answers(*SYSTEM_REDIS):
        return _Redis("redis://127.0.0.1:6379/0", "the system Redis at 127.0.0.1:6379")
    warn(
        "no Redis: redis-server is not on PATH and nothing answers on 127.0.0.1:6379; "
        "running without it"
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


DemoBodies = Callable[
    [httpx.AsyncClient, dict[str, str], dict[str, list[str]]], Awaitable[list[Json] | None]
]


async def _account_bodies(
    http: httpx.AsyncClient, headers: dict[str, str], ids: dict[str, list[str]]
) -> list[Json] | None:
    return [
        {"name": "Acme Corporation", "domain": "acme.example.com"},
        {"name": "Globex", "domain": "globex.example.com"},
        {"name": "Initech", "domain": "initech.example.com"},
    ]


async def _contact_bodies(
    http: httpx.AsyncClient, headers: dict[str, str], ids: dict[str, list[str]]
) -> list[Json] | None:
    accounts = ids.get("accounts")
    if not accounts or len(accounts) < 3:
        return None
    people = [
        ("Ada", "Lovelace", "CTO", 0),
        ("Grace", "Hopper", "VP Engineering", 0),
        ("Hank", "Scorpio", "CEO", 1),
        ("Bill", "Lumbergh", "Division VP", 2),
    ]
    domains = ["acme.example.com", "globex.example.com", "initech.example.com"]
    return [
        {
            "first_name": first,
            "last_name": last,
            "email": f"{first.lower()}@{domains[n]}",
            "title": title,
            "account_id": accounts[n],
        }
        for first, last, title, n in people
    ]


async def _default_pipeline(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> tuple[str, list[Json]] | None:
    """The default pipeline's id and stages, from whatever shape the pipelines API has."""
    resp = await http.get("/v1/pipelines", headers=headers)
    if resp.status_code != 200:
        return None
    body = resp.json()
    rows = body.get("data", []) if isinstance(body, dict) else body
    pipeline = next((p for p in rows if p.get("is_default")), rows[0] if rows else None)
    if not isinstance(pipeline, dict):
        return None
    stages = pipeline.get("stages")
    if not isinstance(stages, list):
        detail = await http.get(f"/v1/pipelines/{pipeline['id']}", headers=headers)
        stages = detail.json().get("stages") if detail.status_code == 200 else None
    if not isinstance(stages, list) or not stages:
        return None
    return str(pipeline["id"]), sorted(stages, key=lambda s: s.get("position", 0))


async def _opportunity_bodies(
    http: httpx.AsyncClient, headers: dict[str, str], ids: dict[str, list[str]]
) -> list[Json] | None:
    accounts = ids.get("accounts")
    if not accounts or len(accounts) < 3:
        return None
    pipeline = await _default_pipeline(http, headers)
    today = datetime.now(UTC).date()

    def body(name: str, account: int, amount: str, stage: int, close_in_days: int) -> Json:
        out: Json = {
            "name": name,
            "account_id": accounts[account],
            "amount": amount,
            "currency": "USD",
            "expected_close_date": (today + timedelta(days=close_in_days)).isoformat(),
        }
        if pipeline is not None:
            pipeline_id, stages = pipeline
            out["pipeline_id"] = pipeline_id
            out["stage_id"] = str(stages[min(stage, len(stages) - 1)]["id"])
        return out

    return [
        body("Acme platform licence", 0, "48000.00", 2, 30),
        body("Globex support renewal", 1, "12500.00", 1, 60),
        body("Initech pilot", 2, "3000.00", 0, 14),
    ]


async def _activity_bodies(
    http: httpx.AsyncClient, headers: dict[str, str], ids: dict[str, list[str]]
) -> list[Json] | None:
    accounts, contacts = ids.get("accounts"), ids.get("contacts")
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
    if ids.get("opportunities"):
        out[0]["opportunity_id"] = ids["opportunities"][0]
    return out


# Order matters: later kinds refer to the ids of earlier ones.
DEMO_DATA: tuple[tuple[str, DemoBodies], ...] = (
    ("accounts", _account_bodies),
    ("contacts", _contact_bodies),
    ("opportunities", _opportunity_bodies),
    ("activities", _activity_bodies),
)


def _post_routes(app: FastAPI) -> set[str]:
    # From the OpenAPI document: FastAPI includes routers lazily, so app.routes does
    # not list their routes.
    paths: dict[str, dict[str, Any]] = app.openapi().get("paths", {})
    return {path for path, operations in paths.items() if "post" in operations}


async def _seed_demo_data(
    http: httpx.AsyncClient, app: FastAPI, demo: Json, state: Json, paths: _Paths
) -> None:
    """Demo records through the HTTP API, each kind once. Kinds whose endpoints do not
    exist yet are left for a later run; Idempotency-Keys make a re-run after a crash
    replay instead of duplicating."""
    token = await _token(http, demo)
    if token is None:
        warn("the demo tenant's client cannot get a token; no demo data")
        return
    headers = {"Authorization": f"Bearer {token}"}
    if state.get("demo_tenant_id") != demo["id"]:
        # Progress belongs to one tenant: a demo tenant made anew starts from nothing.
        state.update(demo_tenant_id=demo["id"], demo_seeded=[], demo_ids={})
    done: list[str] = state.setdefault("demo_seeded", [])
    ids: dict[str, list[str]] = state.setdefault("demo_ids", {})
    routes = _post_routes(app)
    for kind, make_bodies in DEMO_DATA:
        if kind in done or f"/v1/{kind}" not in routes:
            continue
        bodies = await make_bodies(http, headers, ids)
        if bodies is None:
            continue
        made: list[str] = []
        for n, body in enumerate(bodies):
            resp = await http.post(
                f"/v1/{kind}",
                json=body,
                headers={**headers, "Idempotency-Key": f"{_KEY_PREFIX}:{kind}:{n}"},
            )
            if resp.status_code != 201:
                warn(f"demo {kind} not created ({_detail(resp)}); will retry on the next run")
                break
            made.append(str(resp.json()["id"]))
        else:
            ids[kind] = made
            done.append(kind)
            _save(paths.state, state)
            say(f"demo data: {len(made)} {kind}")


@dataclass(frozen=True)
class _Bootstrapped:
    admin: Json
    demo: Json | None
    shards: dict[str, str]


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
                    await _seed_demo_data(http, app, demo, state, paths)
                runtime: Runtime = app.state.runtime
                shards = {
                    s.id: s.dsn for s in sorted(await runtime.reload_topology(), key=lambda s: s.id)
                }
    finally:
        # The app's lifespan froze the heap; this throwaway app's objects must not stay.
        gc.unfreeze()
    return _Bootstrapped(admin, demo, shards)


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


def _write_dev_json(paths: _Paths, base_url: str, boot: _Bootstrapped, settings: Settings) -> None:
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
        "databases": {"control": settings.control_dsn, "shards": boot.shards},
        "redis_url": settings.redis_url,
        # Tools that write encrypted fields (meridian seed --dev-json) need the same KEK.
        "kek_file": str(settings.kek_file) if settings.kek_file else None,
    }
    paths.dev_json.parent.mkdir(exist_ok=True)
    _save(paths.dev_json, data, private=True)


def _banner(
    base_url: str, boot: _Bootstrapped, cluster: LocalCluster | None, redis: _Redis, paths: _Paths
) -> str:
    admin, demo = boot.admin, boot.demo
    lines = [
        "",
        "Meridian dev is running",
        f"  API             {base_url}",
        f"  API docs        {base_url}/docs",
        f"  Token endpoint  {base_url}/oauth/token  (grant_type=client_credentials)",
        f"  Platform admin  client_id={admin['client_id']}  client_secret={admin['client_secret']}",
    ]
    if demo:
        lines.append(
            f"  Demo tenant     {demo['slug']!r}  client_id={demo['client_id']}"
            f"  client_secret={demo['client_secret']}"
        )
    if cluster is not None:
        lines.append(
            f"  PostgreSQL      127.0.0.1:{cluster.port} (private, data in {cluster.root}; "
            f"superuser {cluster.superuser}, roles {OWNER_ROLE}, {APP_ROLE})"
        )
    else:
        lines.append("  PostgreSQL      configured (MERIDIAN_CONTROL_DSN)")
    lines += [
        f"  Redis           {redis.url or '-'} ({redis.label})",
        f"  Details         {paths.dev_json}  (credentials also in {paths.credentials})",
    ]
    if demo:
        lines += [
            "Try it:",
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
        _write_dev_json(paths, base_url, boot, settings)
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


def run_dev(host: str, port: int, data_dir: Path) -> None:
    """Run the platform until Ctrl-C / SIGTERM; raises DevError for problems to report."""
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
            cluster = _choose_cluster(paths, state)
            stack.callback(_stop_postgres, cluster)  # before starting: a failure stops it too
            _start_postgres(cluster)
        redis = _start_redis(paths)
        stack.callback(redis.stop)
        kek_file = _ensure_kek(paths.kek)
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
