"""The OpenAPI document is the API's contract: Schemathesis, every check, against a live
server, once with a tenant's token and once with a platform admin's.

The server runs in a thread on databases of its own (the admin run suspends and deletes
tenants it finds). The budget is small for CI; MERIDIAN_CONTRACT_MAX_EXAMPLES and
MERIDIAN_CONTRACT_SEED widen it (docs/api.md, "The OpenAPI contract").
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from meridian.app import create_app
from meridian.operations import create_admin_client, migrate_all
from meridian.settings import Settings
from tests.fixtures.databases import TestDatabases, recreate_database

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
CONFIG = HERE / "schemathesis.toml"
HOOKS = "tests.web.schemathesis_hooks"
MAX_EXAMPLES = int(os.environ.get("MERIDIAN_CONTRACT_MAX_EXAMPLES", "5"))
SEED = int(os.environ.get("MERIDIAN_CONTRACT_SEED", "1"))
# Each run takes well under a minute at the default budget; this only stops a hang.
RUN_TIMEOUT = 900


@dataclass(frozen=True)
class LiveServer:
    url: str
    settings: Settings


@pytest.fixture(scope="module")
async def contract_databases(databases: TestDatabases) -> TestDatabases:
    """A control plane and two shards of the contract test's own, named under the run's
    prefix so the session drops them with the others."""
    prefix = f"{databases.prefix}_contract"
    own = TestDatabases(
        control=f"{prefix}_control",
        shards={"us-1": ("us", f"{prefix}_us1"), "eu-1": ("eu", f"{prefix}_eu1")},
        redis_url=databases.redis_url,
    )
    for name in [own.control, *(db for _, db in own.shards.values())]:
        await recreate_database(name)
    await migrate_all(own.settings())
    return own


@pytest.fixture(scope="module")
def live_server(contract_databases: TestDatabases) -> Iterator[LiveServer]:
    """The API under uvicorn on 127.0.0.1, in a thread with its own event loop."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # Small pools: schemathesis sends one request at a time, and the suite's two
    # processes share one server of 100 connections (a full one answers 503).
    settings = contract_databases.settings(
        issuer=f"http://127.0.0.1:{port}", shard_pool_size=3, control_pool_size=2
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            log_level="warning",
            lifespan="on",
            # Schemathesis' keep-alive connections are gone; nothing to wait for.
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(300):
        if server.started or not thread.is_alive():
            break
        threading.Event().wait(0.05)
    assert server.started, "the API did not start"
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", settings)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


async def _token(client: httpx.AsyncClient, client_id: str, secret: str) -> str:
    resp = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token


@pytest.fixture(scope="module")
async def tokens(live_server: LiveServer) -> AsyncIterator[dict[str, str]]:
    """A platform admin's token, and the token of a tenant onboarded through the API."""
    admin = await create_admin_client(live_server.settings, "contract admin")
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as client:
        admin_token = await _token(client, admin.client_id, admin.client_secret)
        onboarded = await client.post(
            "/admin/v1/tenants",
            json={"slug": f"contract-{uuid.uuid4().hex[:8]}", "name": "Contract", "region": "us"},
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        assert onboarded.status_code == 201, onboarded.text
        first = onboarded.json()["client"]
        tenant_token = await _token(client, first["client_id"], first["client_secret"])
        yield {"admin": admin_token, "tenant": tenant_token}


async def schemathesis(location: str, *args: str) -> tuple[int, str]:
    """Runs the Schemathesis CLI with every check; returns its exit code and output."""
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        location,
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        # One worker: CPython 3.11 can fail parsing source in concurrent threads, which
        # Hypothesis does when it describes strategies.
        "--workers",
        "1",
        "--no-color",
        *args,
    ]
    python_path = os.pathsep.join([str(ROOT / "platform"), str(ROOT)])
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": python_path}
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


def _bearer(token: str) -> list[str]:
    return ["--header", f"Authorization: Bearer {token}"]


async def test_the_api_keeps_its_contract_for_a_tenant(
    live_server: LiveServer, tokens: dict[str, str]
) -> None:
    """Every operation (the admin ones answer this token 403, as documented)."""
    code, output = await schemathesis(f"{live_server.url}/openapi.json", *_bearer(tokens["tenant"]))
    assert code == 0, output


async def test_the_api_keeps_its_contract_for_a_platform_admin(
    live_server: LiveServer, tokens: dict[str, str]
) -> None:
    """The platform-admin API (a platform token has no tenant: /v1 is 403 throughout,
    which the tenant run already covers)."""
    code, output = await schemathesis(
        f"{live_server.url}/openapi.json",
        *_bearer(tokens["admin"]),
        "--include-path-regex",
        "^/admin/",
    )
    assert code == 0, output


async def test_an_undeclared_status_fails_the_contract(
    live_server: LiveServer, tokens: dict[str, str], tmp_path: Path
) -> None:
    """The harness can fail: the same API against a document that forgets the 404 of
    reading an account is a contract failure (the id is pinned to one nobody has, so
    every request gets that 404)."""
    async with httpx.AsyncClient(base_url=live_server.url) as client:
        document = (await client.get("/openapi.json")).json()
    operation = document["paths"]["/v1/accounts/{account_id}"]["get"]
    del operation["responses"]["404"]
    (account_id,) = (p for p in operation["parameters"] if p["name"] == "account_id")
    account_id["schema"] = {"type": "string", "format": "uuid", "enum": [str(uuid.uuid4())]}
    forgetful = tmp_path / "openapi.json"
    forgetful.write_text(json.dumps(document))
    code, output = await schemathesis(
        str(forgetful),
        "--url",
        live_server.url,
        *_bearer(tokens["tenant"]),
        "--include-operation-id",
        operation["operationId"],
        # The first failure is the answer: no need for the other phases or shrinking.
        "--phases",
        "fuzzing",
        "--max-failures",
        "1",
        "--no-shrink",
    )
    assert code != 0, output
    assert "Undocumented status code" in output, output
    assert "Received: 404" in output, output
