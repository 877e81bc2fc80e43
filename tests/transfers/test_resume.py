"""Imports and exports survive their worker: a worker stopped mid-import, or killed
(SIGKILL) mid-import, or a chunk that fails half-way, leaves the import at its last
committed chunk, and the next run goes on from there: the final counts and records are
exact, no row is written twice. An export resumed by another worker is the whole list.
A job saq lost is queued again by the recovery job; a job whose requester lost access
fails. (No worker runs here but those each test starts.)"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from saq import Queue

from meridian.crud import batch
from meridian.events.jobs import queue_for
from meridian.settings import Settings
from meridian.transfers import files, jobs
from meridian.transfers.exporter import Exporter
from meridian.transfers.worker import recover
from tests.fixtures.api import Tenant
from tests.fixtures.databases import TEST_KEK, raw_dsn
from tests.fixtures.dev_platform import MERIDIAN, clean_env
from tests.fixtures.users import PASSWORD, new_user, sign_in
from tests.fixtures.waiting import eventually
from tests.fixtures.worker import running_worker
from tests.transfers.helpers import (
    csv_bytes,
    every,
    export,
    finished,
    jsonl_rows,
    upload,
)

Headers = dict[str, str]
CHUNK = 20
ROWS = 40 * CHUNK


async def _job(client: httpx.AsyncClient, h: Headers, kind: str, job_id: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/{kind}/{job_id}", headers=h)
    assert resp.status_code == 200, resp.text
    job: dict[str, Any] = resp.json()
    return job


async def _started_import(client: httpx.AsyncClient, tenant: Tenant, marker: str) -> str:
    rows = [[f"{marker}-{i:04d}", f"{marker} {i}"] for i in range(ROWS)]
    data = csv_bytes(["external_id", "last_name"], rows)
    resp = await upload(client, tenant.headers, {"object": "leads"}, data)
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["id"]
    return job_id


async def _part_done(client: httpx.AsyncClient, h: Headers, job_id: str) -> dict[str, Any]:
    async def some() -> dict[str, Any] | None:
        job = await _job(client, h, "imports", job_id)
        return job if job["rows_done"] >= 3 * CHUNK else None

    return await eventually(some, interval=0.005, what="a few chunks imported")


async def _exact(client: httpx.AsyncClient, tenant: Tenant, job_id: str, marker: str) -> None:
    done = await finished(client, tenant.headers, "imports", job_id)
    assert done["state"] == "done", done
    assert (done["rows_done"], done["created"], done["failed"]) == (ROWS, ROWS, 0)
    leads = await every(client, tenant.headers, "/v1/leads", filter=f"last_name[starts]:{marker} ")
    assert sorted(lead["external_id"] for lead in leads) == [
        f"{marker}-{i:04d}" for i in range(ROWS)
    ]


@asynccontextmanager
async def _slow_inserts(settings: Settings, tenant: Tenant, marker: str) -> AsyncIterator[None]:
    """Each lead whose last name starts with ``marker`` takes 50 ms to insert (a trigger
    on the tenant's shard, for the block): a chunk takes a second, so a worker stopped
    after a few chunks is stopped mid-import whatever the machine's speed."""
    shard = next(s.dsn.rsplit("/", 1)[1] for s in settings.shards if s.id == tenant.shard_id)
    name = f"meridian_test_slow_{marker.lower()}"
    conn = await asyncpg.connect(raw_dsn(shard))
    try:
        await conn.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(0.05); RETURN NEW; END $$;"
            f"CREATE TRIGGER {name} BEFORE INSERT ON lead FOR EACH ROW "
            f"WHEN (NEW.last_name LIKE '{marker}%') EXECUTE FUNCTION {name}()"
        )
        yield
    finally:
        await conn.execute(f"DROP TRIGGER IF EXISTS {name} ON lead; DROP FUNCTION IF EXISTS {name}")
        await conn.close()


async def test_a_stopped_worker_hands_the_import_on(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    marker = f"S{uuid.uuid4().hex[:6]}"
    job_id = await _started_import(app_client, tenant, marker)
    async with (
        _slow_inserts(settings, tenant, marker),
        running_worker(settings, import_chunk_rows=CHUNK),
    ):
        part = await _part_done(app_client, tenant.headers, job_id)
    # Stopped: what is committed is whole chunks, and exactly the records made.
    stopped = await _job(app_client, tenant.headers, "imports", job_id)
    assert stopped["state"] == "running"
    assert part["rows_done"] <= stopped["rows_done"] < ROWS, "raise ROWS: it all went through"
    assert stopped["rows_done"] % CHUNK == 0
    made = await every(
        app_client, tenant.headers, "/v1/leads", filter=f"last_name[starts]:{marker} "
    )
    assert len(made) == stopped["created"] == stopped["rows_done"]
    async with running_worker(settings, import_chunk_rows=CHUNK):
        await _exact(app_client, tenant, job_id, marker)


@pytest.mark.slow
async def test_a_killed_worker_leaves_the_import_at_its_last_chunk(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings, tmp_path: Path
) -> None:
    """SIGKILL mid-chunk: the chunk's transaction is lost whole. saq would hand the job on
    once its heartbeat is missed (minutes); the test does what its sweep then does."""
    assert settings.redis_url
    marker = f"K{uuid.uuid4().hex[:6]}"
    job_id = await _started_import(app_client, tenant, marker)
    env = clean_env(
        MERIDIAN_CONTROL_DSN=settings.control_dsn,
        MERIDIAN_CONTROL_ADMIN_DSN=settings.control_admin_dsn or settings.control_dsn,
        MERIDIAN_SHARDS="[]",
        MERIDIAN_REDIS_URL=settings.redis_url,
        MERIDIAN_KEK=TEST_KEK,
        MERIDIAN_IMPORT_CHUNK_ROWS=str(CHUNK),
        MERIDIAN_SHARD_POOL_SIZE="2",
    )
    async with _slow_inserts(settings, tenant, marker):
        process = await asyncio.create_subprocess_exec(
            str(MERIDIAN), "worker", cwd=tmp_path, env=env
        )
        try:
            await _part_done(app_client, tenant.headers, job_id)
        finally:
            process.send_signal(signal.SIGKILL)
            await asyncio.wait_for(process.wait(), timeout=30)
    killed = await _job(app_client, tenant.headers, "imports", job_id)
    assert killed["rows_done"] < ROWS, "raise ROWS: it all went through"
    made = await every(
        app_client, tenant.headers, "/v1/leads", filter=f"last_name[starts]:{marker} "
    )
    assert len(made) == killed["created"] == killed["rows_done"]
    # saq's sweep: the dead worker's job is retried (here, at once).
    queue = queue_for(settings)
    await queue.connect()
    try:
        job = await queue.job(jobs.job_key(uuid.UUID(job_id)))
        assert job is not None
        await queue.retry(job, error="swept (the test)")
    finally:
        await queue.disconnect()
    async with running_worker(settings, import_chunk_rows=CHUNK):
        await _exact(app_client, tenant, job_id, marker)


async def test_a_chunk_that_fails_half_way_is_written_again_whole(
    app_client: httpx.AsyncClient,
    tenant: Tenant,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = f"F{uuid.uuid4().hex[:6]}"
    calls = {"n": 0}
    real = batch.apply

    async def flaky(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        calls["n"] += 1
        results = await real(*args, **kwargs)
        if calls["n"] == 4:  # the fourth chunk's rows were written: then the run dies
            raise ConnectionError("the shard went away")
        return results

    monkeypatch.setattr(batch, "apply", flaky)
    job_id = await _started_import(app_client, tenant, marker)
    async with running_worker(settings, import_chunk_rows=CHUNK):
        await _exact(app_client, tenant, job_id, marker)
    assert calls["n"] == ROWS // CHUNK + 1
    done = await _job(app_client, tenant.headers, "imports", job_id)
    assert done["error"] is None


async def test_an_export_resumed_by_another_worker_is_the_whole_list(
    app_client: httpx.AsyncClient,
    tenant: Tenant,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(files, "CHUNK_BYTES", 2_000)  # a chunk every few pages
    h = tenant.headers
    marker = f"E{uuid.uuid4().hex[:6]}"
    data = csv_bytes(["last_name"], [[f"{marker} {i:04d}"] for i in range(ROWS)])
    resp = await upload(app_client, h, {"object": "leads"}, data)
    assert resp.status_code == 202, resp.text
    async with running_worker(settings, import_chunk_rows=ROWS):
        await finished(app_client, h, "imports", resp.json()["id"])
    query = {"filter": f"last_name[starts]:{marker}", "sort": "last_name"}
    made = await export(app_client, h, object="leads", format="jsonl", **query)

    async def some() -> bool:
        return bool((await _job(app_client, h, "exports", made["id"]))["rows_written"] > 0)

    # The first worker stops after its first chunk: it waits there until it is stopped
    # (however fast the machine, it never finishes the export in its grace period).
    commit = Exporter._commit
    stopped = asyncio.Event()

    async def commit_then_stop(self: Exporter, *args: Any, done: bool) -> None:
        await commit(self, *args, done=done)
        await stopped.wait()

    monkeypatch.setattr(Exporter, "_commit", commit_then_stop)
    async with running_worker(settings, export_page_rows=5):
        await eventually(some, interval=0.005, what="a part exported")
    monkeypatch.setattr(Exporter, "_commit", commit)
    part = await _job(app_client, h, "exports", made["id"])
    assert part["state"] == "running", part
    async with running_worker(settings, export_page_rows=7):
        done = await finished(app_client, h, "exports", made["id"])
    assert done["state"] == "done", done
    file = await app_client.get(done["download_url"])
    assert jsonl_rows(file.content) == await every(app_client, h, "/v1/leads", **query)


async def test_a_lost_job_is_queued_again(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    h = tenant.headers
    made = await export(app_client, h, object="cases", format="csv")
    queue: Queue = queue_for(settings)
    await queue.connect()
    try:
        job = await queue.job(jobs.job_key(uuid.UUID(made["id"])))
        assert job is not None
        await queue.abort(job, "lost (the test)")  # as a flushed Redis would lose it
    finally:
        await queue.disconnect()
    async with running_worker(settings, transfer_stale_after=0.01) as worker:
        # This call queues it again, unless the worker's own sweep (every 15 s) just did:
        # either way the lost export is done, which it never is without a recovery.
        await recover(worker.context)
        done = await finished(app_client, h, "exports", made["id"])
    assert done["state"] == "done"


async def test_a_job_fails_when_its_requester_may_no_longer_run_it(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    user = await new_user(app_client, tenant, role="sales_manager", password=PASSWORD)
    h = await sign_in(user_api, tenant, user["email"])
    made = await export(app_client, h, object="contacts", format="csv")
    resp = await upload(app_client, h, {"object": "leads"}, b"last_name\nX\n")
    assert resp.status_code == 202, resp.text
    deactivated = await app_client.patch(
        f"/v1/users/{user['id']}", json={"active": False}, headers=tenant.headers
    )
    assert deactivated.status_code == 200, deactivated.text
    async with running_worker(settings):
        failed = await finished(app_client, tenant.headers, "exports", made["id"])
        imported = await finished(app_client, tenant.headers, "imports", resp.json()["id"])
    for job in (failed, imported):
        assert job["state"] == "failed", job
        assert "no longer an active user" in job["error"]
    assert failed["download_url"] is None
    events = await app_client.get(
        "/v1/audit", params={"type": "export.failed,import.failed"}, headers=tenant.headers
    )
    ids = {e["record"]["id"] for e in events.json()["data"]}
    assert {made["id"], imported["id"]} <= ids


async def test_an_import_cancelled_mid_run_stops_after_its_chunk(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    marker = f"C{uuid.uuid4().hex[:6]}"
    job_id = await _started_import(app_client, tenant, marker)
    async with (
        _slow_inserts(settings, tenant, marker),
        running_worker(settings, import_chunk_rows=CHUNK),
    ):
        await _part_done(app_client, tenant.headers, job_id)
        resp = await app_client.post(f"/v1/imports/{job_id}/cancel", headers=tenant.headers)
        assert resp.status_code == 200, resp.text
        cancelled = resp.json()
        assert cancelled["state"] == "cancelled"
        assert 0 < cancelled["rows_done"] < ROWS
        assert cancelled["rows_done"] % CHUNK == 0
        await asyncio.sleep(1.0)  # the worker sees it at its next chunk and stops
    after = await _job(app_client, tenant.headers, "imports", job_id)
    assert after["rows_done"] == cancelled["rows_done"]
    made = await every(
        app_client, tenant.headers, "/v1/leads", filter=f"last_name[starts]:{marker} "
    )
    assert len(made) == cancelled["created"] == cancelled["rows_done"]
