"""Private PostgreSQL clusters run with the system's binaries, for ``meridian dev`` and tests.

PostgreSQL refuses to run as root, so when we are root the binaries run as the
``postgres`` user (through ``runuser``) and the cluster's directory is handed to it.
Everything here is synchronous (subprocesses); async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PG_USER = "postgres"  # the OS user the server runs as when we are root
StopMode = Literal["smart", "fast", "immediate"]
# sockaddr_un.sun_path is 108 bytes; leave room for "/.s.PGSQL.NNNNN" and the NUL.
_MAX_SOCKET_DIR = 90
# Names we quote as identifiers and also embed as literals: no quotes, no `$`.
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")


class LocalPgError(RuntimeError):
    """A private cluster could not be set up, started or stopped; the message says why."""


def find_bin_dir() -> Path:
    """The directory of ``initdb``/``pg_ctl``: ``pg_config --bindir``, else the newest
    ``/usr/lib/postgresql/*/bin`` (Debian keeps the server binaries off PATH)."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            if out and (Path(out) / "initdb").exists():
                return Path(out)
    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]

    def major(p: Path) -> tuple[int, str]:
        name = p.parent.name
        return (int(name), name) if name.isdigit() else (-1, name)

    if candidates:
        return max(candidates, key=major)
    raise LocalPgError(
        "PostgreSQL server binaries not found: no usable `pg_config --bindir` and nothing "
        "in /usr/lib/postgresql/*/bin. Install them (Debian: apt-get install postgresql) "
        "or set MERIDIAN_CONTROL_DSN to use an existing server."
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it; racy but good enough locally)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on the port. SO_REUSEADDR, as servers set it, so that
    TIME_WAIT leftovers of a server that just stopped do not count as "in use"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _is_root() -> bool:
    return os.geteuid() == 0


def _check_reachable(path: Path, user: pwd.struct_passwd) -> None:
    """Fail clearly when ``user`` cannot traverse to ``path`` (e.g. under a 0700 /root)."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise LocalPgError(
                f"the {user.pw_name!r} user cannot reach {path}: {parent} is mode "
                f"{stat.S_IMODE(st.st_mode):o}. Put the data directory somewhere it can "
                f"reach, or run `chmod o+x {parent}`."
            )


def _ident(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"not a plain SQL name (letters, digits, _ and -): {name!r}")
    return f'"{name}"'


@dataclass(frozen=True)
class LocalCluster:
    """One private cluster: ``root/data`` (PGDATA), ``root/run`` (socket), ``root/postgres.log``.

    ``fsync=False`` is for throwaway test clusters only: a crash can corrupt the data.
    """

    root: Path
    port: int
    host: str = "127.0.0.1"
    fsync: bool = True
    superuser: str = "postgres"
    bin_dir: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        run = self.root / "run"
        # A deep root would overflow the socket path; sockets are per port, so the
        # shared temp dir (like Debian's /var/run/postgresql) is a safe fallback.
        return run if len(str(run)) <= _MAX_SOCKET_DIR else Path(tempfile.gettempdir())

    # -- running the binaries ----------------------------------------------------------

    def _bin(self, name: str) -> str:
        return str((self.bin_dir or find_bin_dir()) / name)

    def _run(
        self, argv: list[str], *, timeout: float, new_session: bool = False
    ) -> subprocess.CompletedProcess[str]:
        if _is_root():
            argv = ["runuser", "-u", PG_USER, "--", *argv]
        try:
            return subprocess.run(  # noqa: S603 - argv built here, no shell
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                # The server user must be able to stat its cwd (ours may be /root).
                cwd=self.root,
                env={**os.environ, "LC_ALL": "C"},
                start_new_session=new_session,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalPgError(
                f"{argv[-1]}: timed out after {timeout:.0f}s{self._log_tail()}"
            ) from exc

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "run").mkdir(exist_ok=True)
        if _is_root():
            try:
                user = pwd.getpwnam(PG_USER)
            except KeyError as exc:
                raise LocalPgError(
                    f"running as root, but there is no {PG_USER!r} user to run PostgreSQL as"
                ) from exc
            if shutil.which("runuser") is None:
                raise LocalPgError(
                    "running as root needs `runuser` (util-linux) to drop to postgres"
                )
            _check_reachable(self.root, user)
            for path in (self.root, self.root / "run"):
                os.chown(path, user.pw_uid, user.pw_gid)
            if self.log_file.exists():
                os.chown(self.log_file, user.pw_uid, user.pw_gid)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        tail = "\n".join(text.splitlines()[-lines:])
        return f"\n--- {self.log_file} (last lines) ---\n{tail}" if tail else ""

    # -- lifecycle ---------------------------------------------------------------------

    def initdb(self) -> bool:
        """Create the cluster unless it exists; returns whether it was created.

        initdb writes into a staging directory that is renamed into place, so an
        interrupted run leaves no half-made cluster behind.
        """
        if (self.data_dir / "PG_VERSION").exists():
            return False
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise LocalPgError(f"{self.data_dir} exists but is not a PostgreSQL data directory")
        self._prepare_root()
        staging = self.root / "data.initdb"
        if staging.exists():
            shutil.rmtree(staging)
        argv = [
            self._bin("initdb"),
            "-D",
            str(staging),
            "-U",
            self.superuser,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]
        if not self.fsync:
            argv.append("--no-sync")
        done = self._run(argv, timeout=180)
        if done.returncode != 0:
            raise LocalPgError(f"initdb failed ({done.returncode}):\n{done.stderr or done.stdout}")
        if self.data_dir.exists():
            self.data_dir.rmdir()  # empty (checked above)
        staging.rename(self.data_dir)
        return True

    def is_running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        # pg_ctl status: 0 running, 3 not running, 4 no data directory.
        return (
            self._run(
                [self._bin("pg_ctl"), "status", "-D", str(self.data_dir)], timeout=30
            ).returncode
            == 0
        )

    def running_port(self) -> int | None:
        """The port of the running server, from postmaster.pid (line 4), if any."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        return int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until it accepts connections (no-op if running)."""
        if self.is_running():
            running = self.running_port()
            if running != self.port:
                raise LocalPgError(
                    f"the cluster in {self.data_dir} already runs on port {running}, "
                    f"not {self.port}"
                )
            return
        if not (self.data_dir / "PG_VERSION").exists():
            raise LocalPgError(f"no cluster in {self.data_dir}: run initdb first")
        if not port_is_free(self.port, self.host):
            raise LocalPgError(f"port {self.host}:{self.port} is already in use")
        self._prepare_root()
        settings = {"listen_addresses": self.host, "fsync": "on" if self.fsync else "off"}
        if not self.fsync:
            # Throwaway clusters: skip what only protects against an OS crash. Keep
            # synchronous_commit on: without it an immediate stop (a test's "shard
            # down") loses commits still in WAL buffers; with fsync off it costs a write().
            settings["full_page_writes"] = "off"
        options = [f"-p {self.port}", f"-k {shlex.quote(str(self.socket_dir))}"]
        options += [f"-c {k}={shlex.quote(v)}" for k, v in settings.items()]
        done = self._run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(int(timeout)),
                "-o",
                " ".join(options),
                "start",
            ],
            timeout=timeout + 10,
            # Its own session: a Ctrl-C in our terminal must not reach the server; we
            # stop it ourselves, in order, after the API.
            new_session=True,
        )
        if done.returncode != 0:
            raise LocalPgError(
                f"pg_ctl start failed ({done.returncode}): {done.stderr.strip()}{self._log_tail()}"
            )

    def stop(self, mode: StopMode = "fast", timeout: float = 60) -> None:
        """Stop the server (no-op if it is not running). ``immediate`` skips the
        shutdown checkpoint: like a crash, recovered on the next start."""
        if not self.is_running():
            return
        done = self._run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.data_dir),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(timeout)),
                "stop",
            ],
            timeout=timeout + 10,
        )
        if done.returncode != 0 and self.is_running():
            raise LocalPgError(f"pg_ctl stop failed ({done.returncode}): {done.stderr.strip()}")

    # -- connecting --------------------------------------------------------------------

    def dsn(self, database: str = "postgres", user: str | None = None) -> str:
        """A SQLAlchemy (asyncpg) URL, the form ``Settings`` takes."""
        return f"postgresql+asyncpg://{user or self.superuser}@{self.host}:{self.port}/{database}"

    def url(self, database: str = "postgres", user: str | None = None) -> str:
        """A libpq URL (psql, asyncpg.connect)."""
        return f"postgresql://{user or self.superuser}@{self.host}:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run SQL as the superuser with psql over TCP; returns unaligned output."""
        argv = [
            self._bin("psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-d",
            database,
            "-c",
            statement,
        ]
        try:
            done = subprocess.run(  # noqa: S603 - argv built here, no shell
                argv, capture_output=True, text=True, timeout=60, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalPgError(f"psql timed out running: {statement}") from exc
        if done.returncode != 0:
            raise LocalPgError(f"psql failed: {done.stderr.strip()}\n  running: {statement}")
        return done.stdout.strip()

    def ensure_role(self, name: str, *, login: bool = True, bypass_rls: bool = False) -> None:
        """Create the role if missing and (re)assert its LOGIN / BYPASSRLS attributes."""
        attrs = f"{'LOGIN' if login else 'NOLOGIN'} {'BYPASSRLS' if bypass_rls else 'NOBYPASSRLS'}"
        role = _ident(name)  # validated, so it is also safe as the literal below
        exists = f"SELECT 1 FROM pg_roles WHERE rolname = '{name}'"  # noqa: S608
        self.sql(
            f"DO $$ BEGIN IF NOT EXISTS ({exists}) THEN CREATE ROLE {role} {attrs}; END IF; "
            f"EXCEPTION WHEN duplicate_object THEN NULL; END $$; ALTER ROLE {role} {attrs}"
        )

    def ensure_database(self, name: str, owner: str | None = None) -> bool:
        """Create the database if missing; returns whether it was created."""
        db = _ident(name)  # validated, so it is also safe as the literal below
        if self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'"):  # noqa: S608
            return False
        owner_clause = f" OWNER {_ident(owner)}" if owner else ""
        self.sql(f"CREATE DATABASE {db}{owner_clause}")
        return True
