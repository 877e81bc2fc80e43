"""Private PostgreSQL clusters for ``meridian dev`` and tests, run with either the
binaries bundled by the ``pgserver`` wheel (``embedded``: nothing to install but
Python) or the system's (``system``: Debian's ``postgresql`` package).

PostgreSQL refuses to run as root, so as root the binaries run as an unprivileged
server user (``postgres``, else a ``meridian-pg`` system user made on first use). That
user often cannot reach the cluster's directory: a checkout in root's home sits under a
mode-700 folder. Rather than loosen the home's permissions, the cluster's directory is
opened here and handed to the server as an inherited descriptor, and every path it is
given goes through ``/proc/self/fd/<n>``, which reaches the directory without
traversing its parents. Bundled binaries under such a home are staged once in
``/var/cache/meridian`` (root-owned, world-readable), since an executable must be
reachable by path.

Everything here is synchronous (subprocesses); async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

PG_USER = "postgres"  # the server user when we are root, if the system has it
FALLBACK_PG_USER = "meridian-pg"  # made as a system user when there is no `postgres`
PgEngine = Literal["embedded", "system"]
StopMode = Literal["smart", "fast", "immediate"]
# Where bundled binaries are staged when the server user cannot reach the installed ones.
STAGING_ROOT = Path("/var/cache/meridian")
# Names we quote as identifiers and also embed as literals: no quotes, no `$`.
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
_EMBEDDED_PACKAGE = "pgserver"
_EXTRA_HINT = "pip install 'meridian[local]'"


class LocalPgError(RuntimeError):
    """A private cluster could not be set up, started or stopped; the message says why."""


def find_bin_dir() -> Path:
    """The system's ``initdb``/``pg_ctl``: ``pg_config --bindir``, else the newest
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
        "in /usr/lib/postgresql/*/bin. Install them (Debian: apt-get install postgresql), "
        "or use the embedded PostgreSQL (`--postgres embedded`)."
    )


def has_extension(bin_dir: Path, name: str) -> bool:
    """Whether the installation of the binaries in ``bin_dir`` has the extension
    ``name`` (its control file, where that installation's ``pg_config`` says extensions
    live)."""
    done = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [str(bin_dir / "pg_config"), "--sharedir"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise LocalPgError(f"{bin_dir / 'pg_config'} --sharedir failed: {done.stderr.strip()}")
    return (Path(done.stdout.strip()) / "extension" / f"{name}.control").exists()


def embedded_bin_dir() -> Path:
    """The binaries bundled by the ``pgserver`` wheel (located without importing it: its
    import sets up locks and state we do not use)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise LocalPgError(
            f"the embedded PostgreSQL is not installed: {_EXTRA_HINT} "
            "(or use the system's binaries with `--postgres system`)"
        )
    bin_dir = Path(locations[0]) / "pginstall" / "bin"
    if not (bin_dir / "initdb").exists():
        raise LocalPgError(f"the {_EMBEDDED_PACKAGE} package has no binaries in {bin_dir}")
    return bin_dir


def bin_dir_for(engine: PgEngine) -> Path:
    return embedded_bin_dir() if engine == "embedded" else find_bin_dir()


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


def _system_tool(name: str) -> str:
    # /usr/sbin is often not on a user's PATH, even as root.
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/sbin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise LocalPgError(f"running as root needs `{name}` to make a user to run PostgreSQL as")


def server_user() -> pwd.struct_passwd:
    """The unprivileged user the server runs as when we are root."""
    for name in (PG_USER, FALLBACK_PG_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    done = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [
            _system_tool("useradd"),
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            FALLBACK_PG_USER,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    try:
        return pwd.getpwnam(FALLBACK_PG_USER)
    except KeyError as exc:
        raise LocalPgError(
            f"running as root, there is no {PG_USER!r} user to run PostgreSQL as, and "
            f"making {FALLBACK_PG_USER!r} failed: {done.stderr.strip()}"
        ) from exc


def reachable(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` may traverse every directory above ``path``."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # same file system: no second copy of ~30 MB
    except OSError:
        shutil.copy2(src, dst)


def staged_bin_dir(bin_dir: Path, user: pwd.struct_passwd, root: Path = STAGING_ROOT) -> Path:
    """``bin_dir`` if ``user`` can reach it, else a root-owned copy it can reach.

    Only the embedded binaries can be out of reach (a virtualenv under a mode-700 home);
    their install tree and the shared libraries auditwheel put beside the package
    (``pgserver.libs``, found through each binary's ``$ORIGIN/../../../`` rpath) are
    copied with the same relative layout, once per installed version.
    """
    if reachable(bin_dir / "initdb", user):
        return bin_dir
    install = bin_dir.parent  # .../pgserver/pginstall
    site = install.parent.parent
    if install.parent.name != _EMBEDDED_PACKAGE:
        raise LocalPgError(
            f"the {user.pw_name!r} user that runs PostgreSQL cannot reach the binaries in "
            f"{bin_dir} (a folder above them is closed to it): install PostgreSQL where every "
            "user can run it (Debian: apt-get install postgresql), or use the embedded one"
        )
    version = importlib.metadata.version(_EMBEDDED_PACKAGE)
    target = root / f"{_EMBEDDED_PACKAGE}-{version}"
    staged_bin = target / _EMBEDDED_PACKAGE / "pginstall" / "bin"
    if (staged_bin / "initdb").exists():
        st = target.stat()
        # Root-owned and not writable by others, or somebody could swap the binaries.
        if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise LocalPgError(f"{target} is not owned by root alone; remove it and retry")
        return staged_bin
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    for part in ("bin", "lib", "share"):
        shutil.copytree(
            install / part,
            partial / _EMBEDDED_PACKAGE / "pginstall" / part,
            symlinks=True,
            copy_function=_link_or_copy,
        )
    libs = site / f"{_EMBEDDED_PACKAGE}.libs"
    if libs.is_dir():
        shutil.copytree(libs, partial / libs.name, symlinks=True, copy_function=_link_or_copy)
    for path in (partial, *partial.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    try:
        partial.rename(target)  # another process may have staged it meanwhile
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    return staged_bin


def _ident(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"not a plain SQL name (letters, digits, _ and -): {name!r}")
    return f'"{name}"'


@dataclass(frozen=True)
class LocalCluster:
    """One private cluster: ``root/data`` (PGDATA) and ``root/postgres.log``, listening on
    ``host:port`` over TCP only (no Unix socket, so no socket-path length limits).

    ``fsync=False`` is for throwaway test clusters only: a crash can corrupt the data.
    ``settings`` are further server settings given at each start (``-c name=value``), e.g.
    ``shared_preload_libraries``, which only a server start can set.
    """

    root: Path
    port: int
    host: str = "127.0.0.1"
    fsync: bool = True
    superuser: str = "postgres"
    engine: PgEngine = "system"
    settings: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    # -- running the binaries ----------------------------------------------------------

    @cached_property
    def bin_dir(self) -> Path:
        """The engine's binaries, as a path the server user can reach."""
        found = bin_dir_for(self.engine)
        return staged_bin_dir(found, server_user()) if _is_root() else found

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def binaries_major(self) -> int:
        """The major version of the engine's binaries (``pg_ctl (PostgreSQL) 16.2`` → 16)."""
        out = subprocess.run(  # noqa: S603 - argv built here, no shell
            [self._bin("pg_ctl"), "--version"], capture_output=True, text=True, check=False
        ).stdout
        found = re.search(r"(\d+)(?:\.\d+)?", out)
        if found is None:
            raise LocalPgError(f"cannot tell the version of {self._bin('pg_ctl')}: {out!r}")
        return int(found.group(1))

    def data_major(self) -> int | None:
        """The major version that made the data directory, if there is one."""
        try:
            return int((self.data_dir / "PG_VERSION").read_text().strip())
        except (OSError, ValueError):
            return None

    def _server_run(
        self,
        make_argv: Callable[[Callable[[str], str]], list[str]],
        *,
        timeout: float,
        new_session: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a server binary; ``make_argv`` gets a function that turns a path relative
        to ``root`` into the path the server process must use.

        As root, the process runs as the server user and reaches ``root`` through an
        inherited descriptor (see the module docstring), so the directories above it
        may be closed to that user.
        """
        env = {**os.environ, "LC_ALL": "C"}
        if not _is_root():
            return self._exec(
                make_argv(lambda rel: str(self.root / rel)),
                timeout=timeout,
                cwd=self.root,
                env=env,
                new_session=new_session,
            )
        user = server_user()
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return self._exec(
                make_argv(lambda rel: f"/proc/self/fd/{fd}/{rel}"),
                timeout=timeout,
                cwd="/",  # the server user may not be able to stat ours
                env={**env, "HOME": "/"},
                new_session=new_session,
                pass_fds=(fd,),
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=os.getgrouplist(user.pw_name, user.pw_gid),
            )
        finally:
            os.close(fd)

    def _exec(
        self,
        argv: list[str],
        *,
        timeout: float,
        cwd: Path | str,
        env: dict[str, str],
        new_session: bool = False,
        pass_fds: tuple[int, ...] = (),
        user: int | None = None,
        group: int | None = None,
        extra_groups: list[int] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(  # noqa: S603 - argv built here, no shell
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=cwd,
                env=env,
                start_new_session=new_session,
                pass_fds=pass_fds,
                user=user,
                group=group,
                extra_groups=extra_groups,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalPgError(
                f"{Path(argv[0]).name}: timed out after {timeout:.0f}s{self._log_tail()}"
            ) from exc

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if _is_root():
            user = server_user()
            os.chown(self.root, user.pw_uid, user.pw_gid)
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
        staging = "data.initdb"
        shutil.rmtree(self.root / staging, ignore_errors=True)
        extra = [] if self.fsync else ["--no-sync"]
        done = self._server_run(
            lambda at: [
                self._bin("initdb"),
                "-D",
                at(staging),
                "-U",
                self.superuser,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                *extra,
            ],
            timeout=180,
        )
        if done.returncode != 0:
            raise LocalPgError(f"initdb failed ({done.returncode}):\n{done.stderr or done.stdout}")
        if self.data_dir.exists():
            self.data_dir.rmdir()  # empty (checked above)
        (self.root / staging).rename(self.data_dir)
        return True

    def is_running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        # pg_ctl status: 0 running, 3 not running, 4 no data directory.
        done = self._server_run(
            lambda at: [self._bin("pg_ctl"), "status", "-D", at("data")], timeout=30
        )
        return done.returncode == 0

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
        made_by = self.data_major()
        if made_by is None:
            raise LocalPgError(f"no cluster in {self.data_dir}: run initdb first")
        if made_by != (major := self.binaries_major()):
            raise LocalPgError(
                f"the cluster in {self.data_dir} was made by PostgreSQL {made_by}, and the "
                f"{self.engine} binaries are PostgreSQL {major}"
            )
        if not port_is_free(self.port, self.host):
            raise LocalPgError(f"port {self.host}:{self.port} is already in use")
        self._prepare_root()
        settings = {"listen_addresses": self.host, "fsync": "on" if self.fsync else "off"}
        if not self.fsync:
            # Throwaway clusters: skip what only protects against an OS crash. Keep
            # synchronous_commit on: without it an immediate stop (a test's "shard
            # down") loses commits still in WAL buffers; with fsync off it costs a write().
            settings["full_page_writes"] = "off"
        settings.update(self.settings)
        # -k '': TCP only (clients all connect to host:port).
        options = [f"-p {self.port}", "-k ''"]
        options += [f"-c {k}={shlex.quote(v)}" for k, v in settings.items()]
        done = self._server_run(
            lambda at: [
                self._bin("pg_ctl"),
                "-D",
                at("data"),
                "-l",
                at(self.log_file.name),
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
        done = self._server_run(
            lambda at: [
                self._bin("pg_ctl"),
                "-D",
                at("data"),
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

    def ensure_role(
        self, name: str, *, login: bool = True, bypass_rls: bool = False, superuser: bool = False
    ) -> None:
        """Create the role if missing and (re)assert its LOGIN / BYPASSRLS / SUPERUSER
        attributes."""
        attrs = (
            f"{'LOGIN' if login else 'NOLOGIN'} {'BYPASSRLS' if bypass_rls else 'NOBYPASSRLS'} "
            f"{'SUPERUSER' if superuser else 'NOSUPERUSER'}"
        )
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
