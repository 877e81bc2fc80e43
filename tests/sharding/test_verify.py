"""Comparing a tenant's rows on two databases (``sharding.verify``), on a throwaway
server with ``wal_level = logical``: the live comparison, the recheck by key, the keys
a slot's changes touched, and the rows written since a marker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from sharding import verify
from tests.fixtures.moving import LOGICAL
from tests.fixtures.pgcluster import StartCluster

pytestmark = pytest.mark.slow

SCHEMA = """
CREATE TABLE person (tenant_id uuid, id uuid, name text, PRIMARY KEY (tenant_id, id));
CREATE TABLE tag (tenant_id uuid, kind text, n integer, label text,
                  PRIMARY KEY (tenant_id, kind, n));
"""
T, OTHER = uuid.UUID(int=1), uuid.UUID(int=2)


@pytest.fixture(scope="module")
async def pair(pg_clusters: StartCluster) -> AsyncIterator[tuple[asyncpg.Connection, ...]]:
    server = await asyncio.to_thread(pg_clusters, LOGICAL)
    conns = []
    for db in ("va", "vb"):
        await asyncio.to_thread(server.ensure_database, db)
        conn = await asyncpg.connect(server.url(db))
        await conn.execute(SCHEMA)
        conns.append(conn)
    yield tuple(conns)
    for conn in conns:
        await conn.close()


@pytest.fixture
async def sides(
    pair: tuple[asyncpg.Connection, ...],
) -> tuple[asyncpg.Connection, asyncpg.Connection]:
    """Both databases with the same rows of two tenants."""
    src, dst = pair
    for conn in (src, dst):
        await conn.execute("TRUNCATE person, tag")
        for tenant in (T, OTHER):
            await conn.executemany(
                "INSERT INTO person VALUES ($1, $2, $3)",
                [(tenant, uuid.UUID(int=100 + i), f"p{i}") for i in range(50)],
            )
            await conn.executemany(
                "INSERT INTO tag VALUES ($1, $2, $3, $4)",
                [(tenant, kind, i, f"{kind}{i}") for kind in ("a", "B", "c") for i in range(12)],
            )
    return src, dst


async def keys(conn: asyncpg.Connection) -> dict[str, verify.TableKey]:
    return await verify.primary_keys(conn, ["person", "tag"])


async def test_equal_sides_have_no_differences(sides: tuple[asyncpg.Connection, ...]) -> None:
    src, dst = sides
    differing, compared = await verify.live_differences(src, dst, await keys(src), T)
    assert differing == {}
    assert compared == 50 + 36
    here, there = (
        await verify.checksums(src, ["person", "tag"], T),
        await verify.checksums(dst, ["person", "tag"], T),
    )
    assert here == there


async def test_changed_missing_and_extra_rows_are_found_by_key(
    sides: tuple[asyncpg.Connection, ...],
) -> None:
    src, dst = sides
    await dst.execute(
        "UPDATE person SET name = 'x' WHERE tenant_id = $1 AND id = $2", T, uuid.UUID(int=103)
    )
    await dst.execute("DELETE FROM tag WHERE tenant_id = $1 AND kind = 'B' AND n = 10", T)
    await dst.execute("INSERT INTO tag VALUES ($1, 'zz', 1, 'extra')", T)
    # Another tenant's differences are not this comparison's.
    await dst.execute("UPDATE person SET name = 'y' WHERE tenant_id = $1", OTHER)

    differing, _ = await verify.live_differences(src, dst, await keys(src), T)
    assert differing == {
        "person": [(str(T), str(uuid.UUID(int=103)))],
        "tag": [(str(T), "B", "10"), (str(T), "zz", "1")],
    }
    table_keys = await keys(src)
    wanted = {(str(T), "B", "10"), (str(T), "zz", "1"), (str(T), "a", "3")}
    assert await verify.differing_rows(src, dst, table_keys["tag"], T, wanted) == sorted(
        wanted - {(str(T), "a", "3")}
    )
    assert (await verify.checksums(src, ["tag"], T)) != (await verify.checksums(dst, ["tag"], T))


async def test_too_many_differences_give_up_the_live_comparison(
    sides: tuple[asyncpg.Connection, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = sides
    await dst.execute("UPDATE person SET name = name || '!' WHERE tenant_id = $1", T)
    monkeypatch.setattr(verify, "LIVE_KEYS_CAP", 10)
    differing, _ = await verify.live_differences(src, dst, await keys(src), T)
    assert differing is None
    # The connections are usable afterwards (the streams' transactions ended).
    assert await src.fetchval("SELECT 1") == 1
    assert await dst.fetchval("SELECT 1") == 1


async def test_a_slot_lists_the_keys_the_tenants_changes_touched(
    sides: tuple[asyncpg.Connection, ...],
) -> None:
    src, _ = sides
    await src.execute(
        f"CREATE PUBLICATION vp FOR TABLE person WHERE (tenant_id = '{T}'), "
        f"tag WHERE (tenant_id = '{T}')"
    )
    await src.execute("SELECT pg_create_logical_replication_slot('vs', 'pgoutput')")
    try:
        await src.execute("INSERT INTO person VALUES ($1, $2, 'new')", T, uuid.UUID(int=999))
        await src.execute(
            "UPDATE person SET name = 'upd' WHERE tenant_id = $1 AND id = $2", T, uuid.UUID(int=101)
        )
        await src.execute("DELETE FROM tag WHERE tenant_id = $1 AND kind = 'c' AND n = 2", T)
        await src.execute("UPDATE person SET name = 'theirs' WHERE tenant_id = $1", OTHER)
        upto = await src.fetchval("SELECT pg_current_wal_lsn()::text")
        changed = await verify.changed_keys(src, "vs", "vp", upto)
        assert changed == {
            "person": {(str(T), str(uuid.UUID(int=999))), (str(T), str(uuid.UUID(int=101)))},
            "tag": {(str(T), "c", "2")},
        }
        # Peeked: the slot keeps its place, and the same changes are listed again.
        assert await verify.changed_keys(src, "vs", "vp", upto) == changed
        await src.execute("TRUNCATE tag")
        upto = await src.fetchval("SELECT pg_current_wal_lsn()::text")
        with pytest.raises(verify.TruncatedError):
            await verify.changed_keys(src, "vs", "vp", upto)
    finally:
        await src.execute("SELECT pg_drop_replication_slot('vs')")
        await src.execute("DROP PUBLICATION vp")


async def test_rows_written_since_a_marker(sides: tuple[asyncpg.Connection, ...]) -> None:
    _, dst = sides
    marker = await verify.xid_marker(dst)
    table_keys = await keys(dst)
    assert await verify.rows_written_since(dst, table_keys["person"], T, marker) == set()
    await dst.execute(
        "UPDATE person SET name = 'later' WHERE tenant_id = $1 AND id = $2", T, uuid.UUID(int=105)
    )
    await dst.execute("INSERT INTO tag VALUES ($1, 'new', 1, 'x')", T)
    await dst.execute("UPDATE person SET name = 'other' WHERE tenant_id = $1", OTHER)
    assert await verify.rows_written_since(dst, table_keys["person"], T, marker) == {
        (str(T), str(uuid.UUID(int=105)))
    }
    assert await verify.rows_written_since(dst, table_keys["tag"], T, marker) == {
        (str(T), "new", "1")
    }
