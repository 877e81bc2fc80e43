"""A shard whose pooled connections died (its server restarted, an administrator or an
idle timeout ended the backends) but which accepts new ones is up: the next request
reconnects and answers, for reads and writes alike, and the shard's breaker stays
closed. Only when reconnecting fails too is the shard unavailable (503), which
tests/sharding/test_refused_connections.py covers.

Each test ends the backends of a throwaway shard database of its own."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from tests.fixtures.databases import raw_dsn
from tests.fixtures.waiting import eventually
from tests.sharding.test_refused_connections import (  # noqa: F401 - the fixture
    Refusing,
    _runtime,
    refusing,
)


async def _end_backends(database: str) -> None:
    """Ends every client backend ``database`` has now and waits until they are gone.
    Not until none is left: a read pool restores its floor of connections in the
    background as soon as it notices, which a wait for zero races against."""
    admin = await asyncpg.connect(raw_dsn("postgres"))
    try:
        pids = [
            r["pid"]
            for r in await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                database,
            )
        ]
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)

        async def gone() -> bool:
            left = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
            )
            return not left

        await eventually(gone, what=f"the backends of {database} ended")
    finally:
        await admin.close()


async def test_requests_after_the_backends_ended_are_served(
    app_client: httpx.AsyncClient,
    refusing: Refusing,  # noqa: F811 - the fixture imported above
) -> None:
    headers = refusing.tenant.headers
    made = await app_client.post("/v1/accounts", json={"name": "Kept"}, headers=headers)
    assert made.status_code == 201, made.text
    engines = _runtime(app_client).engines
    requests = [
        ("GET", "/v1/accounts?limit=5", None),  # a list: the raw read pool, in a transaction
        # By id, the one-statement read (an id nobody has cached).
        ("GET", f"/v1/accounts/{uuid.uuid4()}", None),
        ("POST", "/v1/accounts", {"name": "After"}),  # a write: the ORM engine
    ]
    for method, path, body in requests:
        # Every pool holds connections whose server end is gone by now.
        for warm in requests[:2]:
            await app_client.request(warm[0], warm[1], headers=headers)
        await _end_backends(refusing.database)
        resp = await app_client.request(method, path, json=body, headers=headers)
        assert resp.status_code < 500, (method, path, resp.status_code, resp.text)
        assert engines.unavailable_for(refusing.shard_id) == 0, (method, path)
    listed = await app_client.get("/v1/accounts", headers=headers)
    assert sorted(a["name"] for a in listed.json()["data"]) == ["After", "Kept"]
