"""The `meridian` commands as a user runs them: in a new shell, from the folder a
`meridian dev` runs in (so they find its platform through `.meridian/dev.json`), or
pointed at it with --dev-json / MERIDIAN_DEV_JSON; errors a user can fix are one line.
`meridian dev` itself is tested in test_quickstart.py."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meridian_dev.postgres import free_port
from tests.fixtures.dev_platform import (
    MERIDIAN,
    DevPlatform,
    clean_env,
    running_dev_platform,
)
from tests.fixtures.waiting import until_serving

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dev() -> Iterator[DevPlatform]:
    with running_dev_platform("meridian-cli-", env=clean_env()) as platform:
        yield platform


def meridian(
    *args: str, cwd: Path, timeout: float = 180, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MERIDIAN), *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def token(base_url: str, client: dict[str, str]) -> dict[str, str]:
    resp = httpx.post(
        f"{base_url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client["client_id"], client["client_secret"]),
    )
    assert resp.status_code == 200, resp.text
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


def demo_contacts(dev: DevPlatform) -> list[dict[str, Any]]:
    """The demo tenant's contacts, decrypted: a request that fails when keys are wrong."""
    headers = token(dev.base_url, dev.info()["demo_tenant"])
    resp = httpx.get(f"{dev.base_url}/v1/contacts", headers=headers)
    assert resp.status_code == 200, resp.text
    rows: list[dict[str, Any]] = resp.json()["data"]
    assert rows
    assert all("@" in row["email"] for row in rows)
    return rows


def test_commands_find_the_dev_platform(dev: DevPlatform, tmp_path: Path) -> None:
    # From its folder: found through .meridian/dev.json, and said so.
    done = meridian("shards", "list", cwd=dev.workdir)
    shards = json_lines(ok(done))
    assert {s["id"] for s in shards} == {"us-1", "eu-1"}
    assert {s["id"]: s["tenant_count"] for s in shards}["us-1"] == 1  # the demo tenant
    assert "using the dev platform of .meridian/dev.json" in done.stderr
    # From elsewhere: named by the option or the environment.
    named = meridian("--dev-json", str(dev.dev_json), "shards", "list", cwd=tmp_path)
    assert json_lines(ok(named)) == shards
    by_env = meridian("shards", "list", cwd=tmp_path, MERIDIAN_DEV_JSON=str(dev.dev_json))
    assert json_lines(ok(by_env)) == shards


@pytest.mark.parametrize(
    ("dsn", "says"),
    [
        ("postgresql+asyncpg://postgres@127.0.0.1:5432/meridian_no_such_db", "does not exist"),
        (f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/meridian_control", "answers"),
    ],
    # Fixed ids: the free port differs between xdist workers, which must collect the
    # same test names.
    ids=["no-such-database", "nothing-listening"],
)
def test_an_unreachable_platform_is_one_line(tmp_path: Path, dsn: str, says: str) -> None:
    done = meridian("shards", "list", cwd=tmp_path, MERIDIAN_CONTROL_DSN=dsn)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("meridian: cannot reach the platform's databases")
    assert says in lines[0]
    assert "scripts/dev" in lines[0]
    assert "MERIDIAN_CONTROL_DSN" in lines[0]


def test_a_missing_dev_json_is_one_line(tmp_path: Path) -> None:
    done = meridian("--dev-json", str(tmp_path / "nope.json"), "keys", "list", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"meridian: {tmp_path / 'nope.json'} does not exist: start the platform with "
        "`scripts/dev` (or `meridian dev`) first, or point MERIDIAN_DEV_JSON / --dev-json at "
        "its dev.json"
    ]


def test_migrate_again_changes_nothing(dev: DevPlatform) -> None:
    out = ok(meridian("migrate", cwd=dev.workdir))
    assert out.strip() == "migrated control plane and 2 shard(s): eu-1, us-1"


def test_admin_create_client_makes_a_working_platform_admin(dev: DevPlatform) -> None:
    client = json.loads(ok(meridian("admin", "create-client", "--name", "ops", cwd=dev.workdir)))
    assert client["scope"] == "platform:admin"
    resp = httpx.get(f"{dev.base_url}/admin/v1/tenants", headers=token(dev.base_url, client))
    assert resp.status_code == 200, resp.text


async def _create_database(server: str, name: str) -> None:
    conn = await asyncpg.connect(f"{server}/postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}" OWNER meridian_owner')
    finally:
        await conn.close()


def test_shards_add_registers_and_migrates_a_new_shard(dev: DevPlatform) -> None:
    info = dev.info()
    owner_dsn = info["databases"]["control_admin"].replace("+asyncpg", "")
    server = owner_dsn.rsplit("/", 1)[0].replace("meridian_owner@", "postgres@")
    asyncio.run(_create_database(server, "meridian_shard_ap_1"))
    app_dsn = info["databases"]["shards"]["us-1"]["dsn"].replace(
        "meridian_shard_us_1", "meridian_shard_ap_1"
    )
    admin_dsn = info["databases"]["shards"]["us-1"]["admin_dsn"].replace(
        "meridian_shard_us_1", "meridian_shard_ap_1"
    )
    out = ok(
        meridian(
            "shards", "add", "ap-1", "--region", "ap", "--dsn", app_dsn,
            "--admin-dsn", admin_dsn, cwd=dev.workdir,
        )
    )  # fmt: skip
    # The engine is the one found on the database: plain PostgreSQL here.
    assert out.strip() == "shard ap-1 (ap, postgres) registered and migrated"
    shards = json_lines(ok(meridian("shards", "list", cwd=dev.workdir)))
    expected = {"id": "ap-1", "region": "ap", "tenant_count": 0, "dedicated": False}
    assert {**expected, "engine": "postgres"}.items() <= next(
        s for s in shards if s["id"] == "ap-1"
    ).items()
    # The running API places a tenant of that region there.
    admin = token(dev.base_url, info["admin"])
    resp = httpx.post(
        f"{dev.base_url}/admin/v1/tenants",
        json={"slug": "apac-co", "name": "APAC Co", "region": "ap"},
        headers=admin,
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["shard_id"] == "ap-1"
    tenant = resp.json()["client"]
    accounts = httpx.get(f"{dev.base_url}/v1/accounts", headers=token(dev.base_url, tenant))
    assert accounts.status_code == 200, accounts.text


def test_shards_add_refuses_an_engine_the_database_does_not_run(dev: DevPlatform) -> None:
    info = dev.info()
    owner_dsn = info["databases"]["control_admin"].replace("+asyncpg", "")
    server = owner_dsn.rsplit("/", 1)[0].replace("meridian_owner@", "postgres@")
    asyncio.run(_create_database(server, "meridian_shard_ap_9"))
    admin_dsn = info["databases"]["shards"]["us-1"]["admin_dsn"].replace(
        "meridian_shard_us_1", "meridian_shard_ap_9"
    )
    # Named with --dev-json: no note about the platform found, the error alone.
    done = meridian(
        "--dev-json", str(dev.dev_json), "shards", "add", "ap-9", "--region", "ap",
        "--dsn", admin_dsn, "--engine", "citus", cwd=dev.workdir,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip() == (
        "meridian shards add: shard ap-9 is declared as engine citus, "
        "but its database runs postgres"
    )
    shards = json_lines(ok(meridian("shards", "list", cwd=dev.workdir)))
    assert "ap-9" not in {s["id"] for s in shards}


def test_signing_keys_rotate_in_two_steps(dev: DevPlatform) -> None:
    before = json_lines(ok(meridian("keys", "list", cwd=dev.workdir)))
    assert [k["state"] for k in before] == ["active"]
    published = json.loads(ok(meridian("keys", "rotate", cwd=dev.workdir)))
    assert published["action"] == "published"
    # Activation waits until every verifier has seen the next key; this platform says
    # that is now (no JWKS caching, instances re-read keys at once).
    quick = {"MERIDIAN_JWKS_MAX_AGE": "0", "MERIDIAN_KEY_REFRESH_INTERVAL": "0.001"}
    activated = json.loads(ok(meridian("keys", "rotate", "--activate", cwd=dev.workdir, **quick)))
    assert activated["action"] == "activated"
    assert activated["kid"] == published["kid"]
    assert activated["retired"] == before[0]["kid"]
    states = {
        k["kid"]: k["state"] for k in json_lines(ok(meridian("keys", "list", cwd=dev.workdir)))
    }
    assert states == {published["kid"]: "active", before[0]["kid"]: "retired"}
    # Tokens keep working throughout (the retired key stays published).
    demo_contacts(dev)


def test_tenants_rotate_key_then_reencrypt(dev: DevPlatform) -> None:
    emails = sorted(c["email"] for c in demo_contacts(dev))
    # The command waits for the instances' key-version cache; a short one keeps this quick.
    fast = {"MERIDIAN_KEY_VERSIONS_TTL": "0.5"}
    out = ok(
        meridian("tenants", "rotate-key", "demo", "--batch-size", "2", cwd=dev.workdir, **fast)
    )
    rotated, result = json_lines(out)
    assert rotated["active_version"] == 2
    assert result["active_version"] == 2
    assert result["rows"]["contact"] == len(emails)
    again = json_lines(ok(meridian("tenants", "reencrypt", "demo", cwd=dev.workdir, **fast)))
    assert again[0]["rows"].get("contact", 0) == 0  # nothing left on the old version
    assert sorted(c["email"] for c in demo_contacts(dev)) == emails


def test_seed_and_loadtest_write_under_the_ignored_folder(dev: DevPlatform) -> None:
    out = ok(
        meridian("seed", "--tenants", "2", "--contacts", "10", "--no-progress", cwd=dev.workdir)
    )
    assert "2 tenants (2 onboarded, 2 loaded" in out
    credentials = dev.workdir / ".meridian" / "loadtest" / "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    done = meridian(
        "loadtest", "--users", "3", "--spawn-rate", "3", "--duration", "4s",
        "--think-time", "0.05-0.2", "--max-error-rate", "0", cwd=dev.workdir,
    )  # fmt: skip
    ok(done)
    summary = json.loads((dev.workdir / ".meridian" / "loadtest" / "summary.json").read_text())
    assert summary["host"] == dev.base_url  # the dev platform's, by default
    assert summary["total"]["requests"] > 0
    assert summary["thresholds"]["passed"] is True
    # Secrets and reports land where git ignores them, in a checkout too.
    for path in (".meridian/loadtest/credentials.json", ".meridian/loadtest/summary.json"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
        assert ignored.returncode == 0, path


def test_tenants_delete_shreds_a_tenant(dev: DevPlatform) -> None:
    # A tenant of its own: the test must not depend on what another test left behind.
    onboarded = httpx.post(
        f"{dev.base_url}/admin/v1/tenants",
        json={"slug": "to-shred", "name": "To shred", "region": "us"},
        headers=token(dev.base_url, dev.info()["admin"]),
    )
    assert onboarded.status_code == 201, onboarded.text
    victim = onboarded.json()
    headers = token(dev.base_url, victim["client"])
    assert httpx.get(f"{dev.base_url}/v1/accounts", headers=headers).status_code == 200
    out = ok(meridian("tenants", "delete", victim["slug"], "--yes", cwd=dev.workdir))
    assert json.loads(out) == {"tenant": victim["id"], "status": "deleted"}
    resp = httpx.get(f"{dev.base_url}/v1/accounts", headers=headers)
    assert resp.status_code == 401, resp.text


def test_tenants_move_between_the_dev_platforms_regions(dev: DevPlatform) -> None:
    """The dev platform's shards can move tenants (logical WAL, a superuser admin role):
    a tenant moves us -> eu in the foreground, then back, planned and resumed."""
    onboarded = httpx.post(
        f"{dev.base_url}/admin/v1/tenants",
        json={"slug": "to-move", "name": "To move", "region": "us"},
        headers=token(dev.base_url, dev.info()["admin"]),
    )
    assert onboarded.status_code == 201, onboarded.text
    tenant = onboarded.json()
    headers = token(dev.base_url, tenant["client"])
    made = httpx.post(
        f"{dev.base_url}/v1/contacts",
        json={"last_name": "Mover", "email": "mover@example.test"},
        headers=headers,
    )
    assert made.status_code == 201, made.text

    moved = json_lines(
        ok(meridian("tenants", "move", "to-move", "--region", "eu", "--wait", cwd=dev.workdir))
    )[-1]
    assert (moved["state"], moved["source_shard_id"], moved["target_shard_id"]) == (
        "done",
        "us-1",
        "eu-1",
    )
    assert moved["rows_copied"] == moved["rows_total"] > 0
    read = httpx.get(f"{dev.base_url}/v1/contacts/{made.json()['id']}", headers=headers)
    assert read.status_code == 200, read.text
    assert read.json()["email"] == "mover@example.test"

    # Back, without --wait: planned here, driven by `moves resume`.
    planned = json.loads(
        ok(meridian("tenants", "move", "to-move", "--to", "us-1", cwd=dev.workdir))
    )
    assert planned["state"] == "planned"
    shown = json.loads(ok(meridian("moves", "show", planned["id"], cwd=dev.workdir)))
    assert shown["id"] == planned["id"]
    resumed = json_lines(ok(meridian("moves", "resume", planned["id"], cwd=dev.workdir)))[-1]
    assert resumed["state"] == "done", resumed
    listed = json_lines(ok(meridian("moves", "list", "--tenant", "to-move", cwd=dev.workdir)))
    assert [m["id"] for m in listed] == [planned["id"], moved["id"]]
    assert httpx.get(f"{dev.base_url}/v1/contacts", headers=headers).status_code == 200

    # Mistakes are one line: both targets, an unknown shard, a finished move.
    both = meridian("tenants", "move", "to-move", "--to", "eu-1", "--region", "eu", cwd=dev.workdir)
    assert both.returncode == 2
    assert "either --to" in both.stderr
    for args, says in (
        (("tenants", "move", "to-move", "--to", "nowhere-1"), "No shard 'nowhere-1'"),
        (("moves", "cancel", planned["id"]), "is done already"),
    ):
        done = meridian(*args, cwd=dev.workdir)
        assert done.returncode == 1, done.stdout + done.stderr
        assert says in done.stderr
        assert "Traceback" not in done.stderr
    # One shard per region: nothing to rebalance, and no shard to drain us-1 into.
    plan = json.loads(ok(meridian("shards", "rebalance", "--dry-run", cwd=dev.workdir)))
    assert plan == {"dry_run": True, "moves": []}
    drain = meridian("shards", "drain", "us-1", cwd=dev.workdir)
    assert drain.returncode == 1
    assert "have nowhere to go" in drain.stderr
    shards = {s["id"]: s for s in json_lines(ok(meridian("shards", "list", cwd=dev.workdir)))}
    assert shards["us-1"]["state"] == "active"  # refused before closing anything


def test_serve_says_where_it_listens(dev: DevPlatform) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [str(MERIDIAN), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=dev.workdir,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        until_serving(f"http://127.0.0.1:{port}/readyz", proc)
        # A second instance on the dev platform's databases serves the same tenants.
        headers = token(f"http://127.0.0.1:{port}", dev.info()["demo_tenant"])
        assert httpx.get(f"http://127.0.0.1:{port}/v1/contacts", headers=headers).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert f"running on http://127.0.0.1:{port}" in output


def test_serve_with_workers_counts_every_process_in_metrics(
    dev: DevPlatform, tmp_path: Path
) -> None:
    """Two worker processes, each answering part of the requests: /metrics tells the
    same totals whichever of them is asked (prometheus_client's multiprocess mode)."""
    port, folder = free_port(), tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_1.db").write_bytes(b"left by an earlier run")
    proc = subprocess.Popen(
        [str(MERIDIAN), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        cwd=dev.workdir,
        env=clean_env(PROMETHEUS_MULTIPROC_DIR=str(folder)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        until_serving(f"{base}/readyz", proc)
        headers = token(base, dev.info()["demo_tenant"])
        answered = 0
        # A connection each: the kernel hands them to both processes.
        while answered < 40 or len(list(folder.glob("counter_*.db"))) < 2:
            assert answered < 400, sorted(p.name for p in folder.iterdir())
            with httpx.Client() as one:
                assert one.get(f"{base}/v1/contacts", headers=headers).status_code == 200
            answered += 1
        for _ in range(6):
            with httpx.Client() as one:
                text = one.get(f"{base}/metrics").text
            served = [
                s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "meridian_http_requests_total"
                and s.labels == {"method": "GET", "route": "/v1/contacts", "status": "200"}
            ]
            assert served == [answered], text
            assert 'meridian_shard_up{shard="us-1"} 1.0' in text
            # The demo tenant made all of them (and is the busiest).
            tenants = [
                s
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "meridian_tenant_requests_total"
            ]
            assert [s.value for s in tenants] == [answered], tenants
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert not (folder / "counter_1.db").exists()  # the earlier run's counts


def test_loadtest_without_locust_names_the_extra(tmp_path: Path) -> None:
    # As on a machine without the extra: an import of locust finds nothing.
    program = (
        "import sys; sys.modules['locust'] = None; "
        "sys.argv = ['meridian', 'loadtest', '--host', 'http://127.0.0.1:9']; "
        "from meridian.cli import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "meridian loadtest: Locust is not installed; install the load-test extra: "
        "pip install 'meridian[loadtest]'"
    ]


def test_rotate_kek_on_the_dev_platform_survives_a_restart(dev: DevPlatform) -> None:
    """After `keys rotate-kek`, the dev platform keeps the new KEK: a restart of
    `meridian dev` and a later `meridian seed` both read and write with it."""
    old = (dev.data_dir / "kek").read_text().strip()
    keyring = dev.workdir / "kek-2.json"
    new = base64.b64encode(os.urandom(32)).decode()
    keyring.write_text(json.dumps({"primary": "kek-2", "keys": {"local-1": old, "kek-2": new}}))
    done = meridian("keys", "rotate-kek", cwd=dev.workdir, MERIDIAN_KEK_FILE=str(keyring))
    result = json.loads(ok(done))
    assert result["primary"] == "kek-2"
    assert result["rewrapped"] >= 1
    assert result["dev_platform_kek_file"] == str(keyring)
    assert dev.info()["kek_file"] == str(keyring)
    dev.stop()
    dev.start()
    assert dev.info()["kek_file"] == str(keyring)
    demo_contacts(dev)  # decrypts: the restarted platform unwraps with the new KEK
    ok(
        meridian(
            "seed",
            "--tenants",
            "1",
            "--contacts",
            "5",
            "--prefix",
            "kek",
            "--no-progress",
            cwd=dev.workdir,
        )
    )
    seeded = json.loads((dev.workdir / ".meridian" / "loadtest" / "credentials.json").read_text())
    tenant = next(t for t in seeded["tenants"] if t["slug"].startswith("kek-"))
    resp = httpx.get(f"{dev.base_url}/v1/contacts", headers=token(dev.base_url, tenant))
    assert resp.status_code == 200, resp.text
