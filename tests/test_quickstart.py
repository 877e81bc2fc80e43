"""The quickstart: `meridian dev` with nothing configured brings up the whole platform
(private PostgreSQL and Redis, a demo tenant with data), stops cleanly on SIGTERM and
Ctrl-C, and a restart on the same data directory reuses everything."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from meridian.localpg import LocalCluster, free_port, port_is_free

pytestmark = pytest.mark.slow

MERIDIAN = Path(sys.executable).with_name("meridian")
READY_TIMEOUT = 90.0
DEMO_KINDS = ("accounts", "contacts", "opportunities", "activities")


def _start(workdir: Path, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    with (workdir / "dev.log").open("ab") as log:
        return subprocess.Popen(
            [str(MERIDIAN), "dev", "--port", str(port), "--data-dir", str(data_dir)],
            cwd=workdir,  # dev.json goes to <cwd>/.meridian/
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _log(workdir: Path) -> str:
    return (workdir / "dev.log").read_text(errors="replace")[-4000:]


def _wait_ready(proc: subprocess.Popen[bytes], base_url: str, workdir: Path) -> float:
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            pytest.fail(f"meridian dev exited with {proc.returncode}:\n{_log(workdir)}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        if time.monotonic() - started > READY_TIMEOUT:
            pytest.fail(f"/readyz not 200 after {READY_TIMEOUT:.0f}s:\n{_log(workdir)}")
        time.sleep(0.25)


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals, workdir: Path) -> float:
    started = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"meridian dev did not stop on {sig.name}:\n{_log(workdir)}")
    assert code == 0, f"exit code {code} on {sig.name}:\n{_log(workdir)}"
    return time.monotonic() - started


def _token(http: httpx.Client, cred: dict[str, str]) -> str:
    resp = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(cred["client_id"], cred["client_secret"]),
    )
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token


def _observe(base_url: str, info: dict[str, Any]) -> dict[str, Any]:
    """What a client sees: the tenants, and the demo tenant's records of each kind."""
    with httpx.Client(base_url=base_url, timeout=10) as http:
        admin = {"Authorization": f"Bearer {_token(http, info['admin'])}"}
        tenants = http.get("/admin/v1/tenants", headers=admin)
        assert tenants.status_code == 200, tenants.text
        demo = {"Authorization": f"Bearer {_token(http, info['demo_tenant'])}"}
        accounts = http.get("/v1/accounts", headers=demo)
        assert accounts.status_code == 200, accounts.text
        seen: dict[str, Any] = {"tenants": sorted(t["slug"] for t in tenants.json()["data"])}
        for kind in DEMO_KINDS:
            resp = http.get(f"/v1/{kind}", params={"limit": 200}, headers=demo)
            if resp.status_code == 200:  # kinds still being built may be missing
                seen[kind] = sorted(row["id"] for row in resp.json()["data"])
        return seen


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _port(url: str) -> int:
    port = urlsplit(url.replace("+asyncpg", "")).port
    assert port is not None
    return port


def _cleanup(data_dir: Path, pg_port: int | None) -> None:
    """After a failure: end whatever the dev process left running."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        pg_port = pg_port or int(json.loads((data_dir / "state.json").read_text())["pg_port"])
    if pg_port is not None:
        with contextlib.suppress(Exception):
            LocalCluster(data_dir / "pg", port=pg_port).stop("immediate")
    redis_dir = data_dir / "redis"
    with contextlib.suppress(OSError, ValueError):
        pid = int((redis_dir / "redis.pid").read_text().strip())
        if Path(f"/proc/{pid}/cwd").resolve() == redis_dir.resolve():
            os.kill(pid, signal.SIGKILL)


def test_dev_from_nothing_then_restart() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="meridian-quickstart-"))
    # As root, PostgreSQL runs as `postgres`, which must be able to traverse into it.
    os.chmod(workdir, 0o711)  # noqa: S103 - traverse only, no listing
    data_dir = workdir / "data"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    proc: subprocess.Popen[bytes] | None = None
    pg_port: int | None = None
    try:
        proc = _start(workdir, data_dir, port)
        first_ready = _wait_ready(proc, base_url, workdir)
        dev_json = workdir / ".meridian" / "dev.json"
        info = json.loads(dev_json.read_text())
        assert set(info) == {
            "base_url",
            "admin",
            "demo_tenant",
            "databases",
            "redis_url",
            "kek_file",
        }
        # The dev KEK is made once, private, and named for tools like `meridian seed`.
        assert info["kek_file"] == str(data_dir.resolve() / "kek")
        assert _mode(data_dir / "kek") == 0o600
        assert info["base_url"] == base_url
        assert set(info["admin"]) == {"client_id", "client_secret"}
        assert set(info["demo_tenant"]) == {"slug", "client_id", "client_secret"}
        assert info["demo_tenant"]["slug"] == "demo"
        assert set(info["databases"]) == {"control", "shards"}
        assert set(info["databases"]["shards"]) == {"us-1", "eu-1"}
        assert "meridian_app@" in info["databases"]["control"]
        assert _mode(dev_json) == 0o600
        assert _mode(data_dir / "credentials.json") == 0o600
        pg_port = _port(info["databases"]["control"])

        before = _observe(base_url, info)
        assert before["tenants"] == ["demo"]
        assert len(before["accounts"]) >= 3

        first_stop = _stop(proc, signal.SIGTERM, workdir)
        # Everything it started is stopped.
        assert not LocalCluster(data_dir / "pg", port=pg_port).is_running()
        assert port_is_free(pg_port)
        if info["redis_url"] and _port(info["redis_url"]) != 6379:
            assert port_is_free(_port(info["redis_url"]))

        proc = _start(workdir, data_dir, port)
        second_ready = _wait_ready(proc, base_url, workdir)
        again = json.loads(dev_json.read_text())
        assert again["admin"] == info["admin"]
        assert again["demo_tenant"] == info["demo_tenant"]
        assert again["databases"] == info["databases"]
        after = _observe(base_url, again)
        # Demo data that existed before is there once, and nothing was added twice;
        # kinds whose endpoints appeared since may have been seeded now.
        assert after["tenants"] == ["demo"]
        for kind, ids in before.items():
            assert after[kind] == ids, kind

        second_stop = _stop(proc, signal.SIGINT, workdir)  # Ctrl-C
        assert not LocalCluster(data_dir / "pg", port=pg_port).is_running()
        print(
            f"\nquickstart: first start ready in {first_ready:.1f}s, stopped in "
            f"{first_stop:.1f}s; restart ready in {second_ready:.1f}s, stopped in "
            f"{second_stop:.1f}s"
        )
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        _cleanup(data_dir, pg_port)
        shutil.rmtree(workdir, ignore_errors=True)
