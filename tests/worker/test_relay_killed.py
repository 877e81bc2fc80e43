"""A worker process killed in the middle of relaying loses no event: the next one
publishes from where the last committed position was, so every event reaches the stream
at least once, each tenant's in order of first publication."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from meridian.settings import Settings
from tests.fixtures.api import Tenant
from tests.fixtures.databases import APP_ROLE, TEST_KEK, raw_dsn
from tests.fixtures.dev_platform import MERIDIAN, clean_env
from tests.fixtures.waiting import eventually
from tests.fixtures.worker import stream_events

EVENTS = 3_000
BATCH = 50

pytestmark = pytest.mark.slow


def worker_env(settings: Settings) -> dict[str, str]:
    return clean_env(
        MERIDIAN_CONTROL_DSN=settings.control_dsn,
        MERIDIAN_CONTROL_ADMIN_DSN=settings.control_admin_dsn or settings.control_dsn,
        MERIDIAN_SHARDS="[]",
        MERIDIAN_REDIS_URL=settings.redis_url or "",
        MERIDIAN_KEK=TEST_KEK,
        MERIDIAN_EVENT_RELAY_BATCH=str(BATCH),
        MERIDIAN_EVENT_RELAY_INTERVAL="0.05",
    )


async def append_events(shard_db: str, tenant_id: str, count: int) -> None:
    """``count`` events in one transaction, as the outbox inserts them."""
    conn = await asyncpg.connect(raw_dsn(shard_db, user=APP_ROLE))
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL app.tenant_id = '{tenant_id}'")
            await conn.executemany(
                "INSERT INTO event_pending (tenant_id, id, type, record_kind, actor_type, data) "
                "VALUES ($1, $2, 'account.updated', 'account', 'system', $3::jsonb)",
                [
                    (
                        tenant_id,
                        f"00000000-0000-7000-8000-{i:012d}",
                        orjson.dumps({"n": i}).decode(),
                    )
                    for i in range(count)
                ],
            )
    finally:
        await conn.close()


async def test_a_killed_worker_loses_no_event(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings, tmp_path: Path
) -> None:
    assert settings.redis_url
    shard_db = next(db for shard, (_, db) in _shards(settings).items() if shard == tenant.shard_id)
    await append_events(shard_db, tenant.id, EVENTS)
    env = worker_env(settings)

    async def published() -> int:
        return len(await stream_events(settings.redis_url or "", tenant.id))

    first = await asyncio.create_subprocess_exec(str(MERIDIAN), "worker", cwd=tmp_path, env=env)
    try:
        await eventually(lambda: _at_least(published, 500), what="a first part relayed")
    finally:
        first.send_signal(signal.SIGKILL)
        await asyncio.wait_for(first.wait(), timeout=30)
    before = await published()
    assert before < EVENTS, "the whole log was relayed before the kill; raise EVENTS"

    second = await asyncio.create_subprocess_exec(str(MERIDIAN), "worker", cwd=tmp_path, env=env)
    try:
        await eventually(lambda: _all_seqs(settings, tenant.id), what="every event relayed")
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.wait_for(second.wait(), timeout=30)
    seqs = [e["seq"] for e in await stream_events(settings.redis_url, tenant.id)]
    assert set(seqs) == set(range(1, EVENTS + 1))
    # At least once: at most the batch in flight at the kill is published again.
    assert len(seqs) - EVENTS <= BATCH
    # In order of first publication: a republished batch repeats what came before it.
    assert list(dict.fromkeys(seqs)) == list(range(1, EVENTS + 1))


def _shards(settings: Settings) -> dict[str, tuple[str, str]]:
    """shard id -> (region, database) of the test platform."""
    return {s.id: (s.region, s.dsn.rsplit("/", 1)[1]) for s in settings.shards}


async def _at_least(count: object, n: int) -> bool:
    assert callable(count)
    return bool(await count() >= n)


async def _all_seqs(settings: Settings, tenant_id: str) -> bool:
    seqs = {e["seq"] for e in await stream_events(settings.redis_url or "", tenant_id)}
    await asyncio.sleep(0)
    return len(seqs) >= EVENTS
