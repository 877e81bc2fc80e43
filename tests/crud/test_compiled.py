"""Statements compiled once and run on raw asyncpg give what SQLAlchemy itself gives,
including shapes whose SQL is only known at execution (IN lists of any length)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import Select, bindparam, select
from sqlalchemy.ext.asyncio import create_async_engine

from meridian.accounts.models import Account
from meridian.crud.compiled import cache_size, compile_statement, fetch, is_cached, prepared
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


# -- the one statement cache -------------------------------------------------------------


def test_a_prepared_shape_is_built_and_compiled_once() -> None:
    built: list[int] = []
    key = ("test", uuid.uuid4())

    def build() -> Select[Any]:
        built.append(1)
        return select(Account.id).where(
            Account.tenant_id == bindparam("tenant_id"), Account.name == "fixed"
        )

    first = prepared(key, build)
    second = prepared(key, build)
    assert first is second
    assert built == [1]
    assert is_cached(key)
    # Named parameters come per execution; a value bound in the statement is a constant.
    tenant = uuid.uuid4()
    assert first.names == ("tenant_id", "name_1")
    assert first.args({"tenant_id": tenant}) == [tenant, "fixed"]
    with pytest.raises(KeyError):
        first.args({})


def test_different_shapes_are_compiled_separately() -> None:
    one = prepared(("test", uuid.uuid4()), lambda: select(Account.id))
    other = prepared(("test", uuid.uuid4()), lambda: select(Account.name))
    assert one is not other
    assert one.sql != other.sql


def test_statements_of_one_shape_share_one_entry_with_their_own_values() -> None:
    tenant_a, tenant_b = uuid.uuid4(), uuid.uuid4()
    sql_a, args_a = compile_statement(select(Account.id).where(Account.tenant_id == tenant_a))
    size = cache_size()
    sql_b, args_b = compile_statement(select(Account.id).where(Account.tenant_id == tenant_b))
    assert cache_size() == size
    assert (sql_a, args_a, args_b) == (sql_b, [tenant_a], [tenant_b])
    # Another shape (another column, another filter) is another entry.
    sql_c, _ = compile_statement(select(Account.name).where(Account.tenant_id == tenant_a))
    sql_d, _ = compile_statement(
        select(Account.id).where(Account.tenant_id == tenant_a, Account.name == "x")
    )
    assert len({sql_a, sql_c, sql_d}) == 3
    assert cache_size() == size + 2


def test_repository_reads_use_the_one_cache() -> None:
    from meridian.contacts.repository import ContactRepository

    sql = ContactRepository.by_id_sql()
    assert ContactRepository.by_id_sql() is sql
    assert is_cached((ContactRepository, "one-statement"))
    assert "e.tid" in sql
    assert "$1" in sql
    assert "$2" not in sql
