"""Statements compiled once and run on raw asyncpg give what SQLAlchemy itself gives,
including shapes whose SQL is only known at execution (IN lists of any length)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import create_async_engine

from meridian.accounts.models import Account
from meridian.crud.compiled import compile_statement, fetch
from tests.fixtures.shard_db import Pair, make_pair, superuser, superuser_dsn

if TYPE_CHECKING:
    from tests.fixtures.databases import TestDatabases

SHARD = "us-1"


@pytest.fixture
async def pair(app_client: httpx.AsyncClient, admin_headers: dict[str, str]) -> Pair:
    return await make_pair(app_client, admin_headers, SHARD, "cmp")


def _by_ids(tenant_id: uuid.UUID, ids: list[uuid.UUID], name: str | None) -> Select[Any]:
    stmt = select(Account.id).where(Account.tenant_id == tenant_id, Account.id.in_(ids))
    if name is not None:
        stmt = stmt.where(Account.name != name)
    return stmt.order_by(Account.id)


async def test_in_lists_of_every_length_share_one_cached_shape(
    databases: TestDatabases, pair: Pair
) -> None:
    a_ids = sorted(pair.a_accounts)
    engine = create_async_engine(superuser_dsn(databases, SHARD))
    try:
        async with superuser(databases, SHARD) as conn, engine.connect() as sa_conn:
            # Same statement shape, different list lengths (and values), in both orders.
            for ids in (a_ids, a_ids[:1], [], a_ids[1:], [uuid.uuid4(), a_ids[0]], a_ids):
                for name in (None, "nobody"):
                    stmt = _by_ids(pair.a_id, ids, name)
                    sql, _ = compile_statement(stmt)
                    assert "POSTCOMPILE" not in sql
                    got = [r["id"] for r in await fetch(conn, stmt)]
                    expected = list((await sa_conn.execute(stmt)).scalars())
                    assert got == expected == sorted(set(ids) & pair.a_accounts), (ids, sql)
            # The tenant filter is a bound value like the others: B gets none of A's ids.
            assert [r["id"] for r in await fetch(conn, _by_ids(pair.b_id, a_ids, None))] == []
    finally:
        await engine.dispose()


async def test_bound_values_are_never_mixed_between_executions(
    databases: TestDatabases, pair: Pair
) -> None:
    async with superuser(databases, SHARD) as conn:
        for tenant_id, ids in ((pair.a_id, pair.a_accounts), (pair.b_id, pair.b_accounts)):
            stmt = select(Account.id).where(Account.tenant_id == tenant_id)
            assert {r["id"] for r in await fetch(conn, stmt)} == ids
