"""What the load-test tests share: a real API server in its own process on the test
databases, and a few seeded tenants with their credentials file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from loadtests.seed import seed
from meridian.settings import Settings
from meridian_dev.postgres import free_port
from tests.fixtures.waiting import until_serving

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def serving(settings: Settings, **env: str) -> Iterator[str]:
    """The real app under uvicorn in its own process, on the test databases, with
    ``env`` added to its environment (MERIDIAN_* settings); yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    environment = {
        **os.environ,
        "MERIDIAN_CONTROL_DSN": settings.control_dsn,
        "MERIDIAN_CONTROL_ADMIN_DSN": settings.control_migrate_dsn,
        "MERIDIAN_SHARDS": json.dumps([s.model_dump() for s in settings.shards]),
        "MERIDIAN_APP_DB_ROLE": settings.app_db_role,
        "MERIDIAN_REDIS_URL": settings.redis_url or "",
        "MERIDIAN_ISSUER": base,
        # The suite's KEK: the server must unwrap the keys the tests' onboarding made.
        "MERIDIAN_KEK": settings.kek.get_secret_value() if settings.kek else "",
        **env,
    }
    command = [sys.executable, "-m", "uvicorn", "meridian.app:create_app", "--factory"]
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=environment,
    )
    try:
        until_serving(f"{base}/healthz", proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.fixture(scope="module")
def api_server(settings: Settings) -> Iterator[str]:
    with serving(settings) as base:
        yield base


@pytest.fixture(scope="module")
async def credentials(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three seeded tenants: regions alternate, so the first and the third share the
    test platform's one US shard."""
    out = tmp_path_factory.mktemp("loadtest") / "credentials.json"
    prefix = f"lt{uuid.uuid4().hex[:8]}"
    await seed(settings, tenants=3, contacts=30, prefix=prefix, out=out, progress=False)
    return out
