"""`meridian tenants export` and `import` as an operator runs them, against the test
platform: an archive written, a second one refused, a wrong key refused on one line, the
tenant restored onto another shard and served as before by the running API."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from meridian.settings import Settings
from tests.backups.helpers import api_view, delete, new_token, populate, same
from tests.fixtures.api import Tenant
from tests.fixtures.databases import TEST_KEK
from tests.fixtures.dev_platform import clean_env
from tests.fixtures.waiting import eventually

REPO = Path(__file__).resolve().parents[2]


async def meridian(settings: Settings, cwd: Path, *args: str) -> tuple[int, str, str]:
    env = clean_env(
        MERIDIAN_CONTROL_DSN=settings.control_dsn,
        MERIDIAN_CONTROL_ADMIN_DSN=settings.control_migrate_dsn,
        MERIDIAN_SHARDS="[]",  # the topology the control plane holds
        MERIDIAN_REDIS_URL=settings.redis_url or "",
        MERIDIAN_KEK=TEST_KEK,
    )
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "platform"), str(REPO)])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meridian",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _ok(done: tuple[int, str, str]) -> dict[str, Any]:
    code, out, err = done
    assert code == 0, f"exit {code}\n{out}\n{err}"
    found: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return found


def _one_line(done: tuple[int, str, str], command: str, says: str) -> None:
    code, out, err = done
    assert code == 1, f"exit {code}\n{out}\n{err}"
    assert err.strip().splitlines() == [err.strip()], err  # one line, no traceback
    assert err.startswith(f"meridian {command}: "), err
    assert says in err, err


async def test_export_and_import_on_the_command_line(
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tenant: Tenant,
    settings: Settings,
    tmp_path: Path,
) -> None:
    made = await populate(app_client, tenant)
    before = await api_view(app_client, tenant, made)
    key_file, wrong = tmp_path / "op.key", tmp_path / "other.key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    wrong.write_bytes(os.urandom(32))
    archive = tmp_path / f"{tenant.slug}.tar.gz"

    args = ("tenants", "export", tenant.slug, "--out", str(archive), "--key-file", str(key_file))
    exported = _ok(await meridian(settings, tmp_path, *args))
    assert exported["tenant"] == tenant.id
    assert exported["rows"] > 0
    assert archive.is_file()
    _one_line(await meridian(settings, tmp_path, *args), "tenants export", "never overwritten")

    await delete(app_client, admin_headers, tenant)
    _one_line(
        await meridian(
            settings, tmp_path, "tenants", "import", str(archive), "--key-file", str(wrong)
        ),
        "tenants import",
        "sealed under operator key",
    )
    imported = _ok(
        await meridian(
            settings,
            tmp_path,
            "tenants",
            "import",
            str(archive),
            "--key-file",
            str(key_file),
            "--shard",
            "eu-1",
        )
    )
    assert imported["shard"] == "eu-1"
    assert imported["rows"] == exported["rows"]
    tenant = await new_token(app_client, tenant)

    async def served() -> bool:
        # The command's invalidations reach this API instance through Redis.
        return (await app_client.get("/v1/contacts", headers=tenant.headers)).status_code == 200

    await eventually(served, what="the restored tenant served")
    same(await api_view(app_client, tenant, made), before)
