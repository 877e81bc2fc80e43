"""Server processes under test and the wrk runs against them."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from loadtests.bench.report import WrkResult, parse_wrk, wrk_script

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(
    url: str, token: str | None = None, timeout: float = 5.0, *, json_body: bytes | None = None
) -> tuple[int, bytes]:
    """GET ``url`` (POST with ``json_body``): the status and the body."""
    request = urllib.request.Request(url, data=json_body)  # noqa: S310 - loopback URLs
    if json_body is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            status: int = resp.status
            return status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Server:
    """A uvicorn server in its own process group, so that stopping it stops its workers."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        log = (self.log_dir / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - argv built by the harness
            self.argv,
            env={**os.environ, **self.env},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {log.name}")
            try:
                status, _ = http_get(self.base_url + self.ready_path, timeout=2.0)
            except OSError:
                status = 0
            if status == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; see {log.name}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # The process group is the one start() created: the server and its workers only.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def uvicorn_argv(app: str, port: int, workers: int, *, factory: bool = True) -> list[str]:
    """The options `meridian serve` passes to uvicorn, for the reference apps."""
    argv = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    if factory:
        argv.append("--factory")
    return [
        *argv,
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def meridian_argv(port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "meridian",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def wrk_version() -> str:
    result = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)  # noqa: S607
    match = re.search(r"wrk (\S+)", result.stdout + result.stderr)
    return match.group(1) if match else "unknown"


@dataclass(frozen=True)
class Load:
    connections: int
    duration: float
    warmup: float


def run_wrk(
    base_url: str,
    requests: list[tuple[str, str | None]],
    load: Load,
    *,
    method: str = "GET",
    body: str | None = None,
) -> WrkResult:
    """A warm-up run (discarded), then the measured run with latency percentiles."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(wrk_script(requests, method=method, body=body))
    try:
        common = ["wrk", "-t1", f"-c{load.connections}", "-s", script.name]
        if load.warmup > 0:
            subprocess.run(  # noqa: S603
                [*common, f"-d{load.warmup:g}s", base_url],
                capture_output=True,
                check=True,
                timeout=load.warmup + 60,
            )
        result = subprocess.run(  # noqa: S603
            [*common, f"-d{load.duration:g}s", "--latency", base_url],
            capture_output=True,
            text=True,
            check=True,
            timeout=load.duration + 60,
        )
    finally:
        Path(script.name).unlink(missing_ok=True)
    return parse_wrk(result.stdout)
