"""Row-level security on a shard, seen by the app role directly (no API, no ORM scoping):
no tenant context sees nothing, the context is per transaction, keys are immutable, and
``meridian_enter_tenant`` is the residency fence."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import asyncpg
import httpx
import pytest

from tests.fixtures.api import Tenant
from tests.fixtures.shard_db import Pair, app_role, make_pair, superuser

if TYPE_CHECKING:
    from tests.fixtures.databases import TestDatabases

SHARD = "us-1"
SHARD_TABLES = (
    "account",
    "contact",
    "pipeline",
    "pipeline_stage",
    "opportunity",
    "activity",
    "idempotency_key",
)


@pytest.fixture
async def pair(app_client: httpx.AsyncClient, admin_headers: dict[str, str]) -> Pair:
    """Two tenants on the same shard, each with accounts created through the API."""
    return await make_pair(app_client, admin_headers, SHARD, "rls")


def _set_local(tenant_id: uuid.UUID) -> str:
    # SET takes no bind parameters; a UUID's text form is safe to inline.
    return f"SET LOCAL app.tenant_id = '{uuid.UUID(str(tenant_id))}'"


async def _sqlstate_of(conn: asyncpg.Connection, query: str, *args: object) -> str:
    with pytest.raises(asyncpg.PostgresError) as info:
        async with conn.transaction():
            await conn.execute(query, *args)
    sqlstate: str = info.value.sqlstate
    return sqlstate


async def test_rows_exist_for_the_superuser(databases: TestDatabases, pair: Pair) -> None:
    # The control for every "sees nothing" below: the rows are really there.
    async with superuser(databases, SHARD) as su:
        rows = await su.fetch(
            "SELECT tenant_id, id FROM account WHERE tenant_id = ANY($1::uuid[])",
            [pair.a_id, pair.b_id],
        )
    assert {r["id"] for r in rows if r["tenant_id"] == pair.a_id} == pair.a_accounts
    assert {r["id"] for r in rows if r["tenant_id"] == pair.b_id} == pair.b_accounts


async def test_no_tenant_context_sees_no_rows(databases: TestDatabases, pair: Pair) -> None:
    async with app_role(databases, SHARD) as conn:
        assert await conn.fetchval("SELECT current_setting('app.tenant_id', true)") in (None, "")
        for table in SHARD_TABLES:
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        # Naming the tenant in the WHERE clause does not help without the context.
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM account WHERE tenant_id = ANY($1::uuid[])",
                [pair.a_id, pair.b_id],
            )
            == 0
        )
        # Writes without context touch nothing either.
        assert await conn.execute("UPDATE account SET name = 'pwned'") == "UPDATE 0"
        assert await conn.execute("DELETE FROM account") == "DELETE 0"


async def test_insert_without_context_is_refused(databases: TestDatabases, pair: Pair) -> None:
    async with app_role(databases, SHARD) as conn:
        state = await _sqlstate_of(
            conn,
            "INSERT INTO account (tenant_id, id, name) VALUES ($1, $2, 'intruder')",
            pair.a_id,
            uuid.uuid4(),
        )
    assert state == "42501"  # new row violates row-level security policy


async def test_set_local_shows_only_that_tenant(databases: TestDatabases, pair: Pair) -> None:
    async with app_role(databases, SHARD) as conn:
        async with conn.transaction():
            await conn.execute(_set_local(pair.a_id))
            rows = await conn.fetch("SELECT tenant_id, id FROM account")
            assert {r["tenant_id"] for r in rows} == {pair.a_id}
            assert {r["id"] for r in rows} == pair.a_accounts
            # Asking for B's rows by id or by tenant finds nothing.
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM account WHERE id = ANY($1::uuid[])",
                    list(pair.b_accounts),
                )
                == 0
            )
            assert (
                await conn.fetchval("SELECT count(*) FROM account WHERE tenant_id = $1", pair.b_id)
                == 0
            )
            # B's rows cannot be changed from A's context.
            changed = await conn.execute(
                "UPDATE account SET name = 'pwned' WHERE id = ANY($1::uuid[])",
                list(pair.b_accounts),
            )
            assert changed == "UPDATE 0"
            deleted = await conn.execute(
                "DELETE FROM account WHERE id = ANY($1::uuid[])", list(pair.b_accounts)
            )
            assert deleted == "DELETE 0"
        # Nor can a row be written into B from A's context.
        state = await _sqlstate_of(
            conn,
            _set_local(pair.a_id)
            + f"; INSERT INTO account (tenant_id, id, name) VALUES ('{pair.b_id}', "
            f"'{uuid.uuid4()}', 'planted')",
        )
        assert state == "42501"
    async with superuser(databases, SHARD) as su:
        names = await su.fetch(
            "SELECT name FROM account WHERE tenant_id = $1 ORDER BY name", pair.b_id
        )
        assert "pwned" not in {r["name"] for r in names}
        assert len(names) == len(pair.b_accounts)


async def test_enter_tenant_sets_the_context(databases: TestDatabases, pair: Pair) -> None:
    async with app_role(databases, SHARD) as conn, conn.transaction():
        await conn.execute("SELECT meridian_enter_tenant($1, 1, true)", pair.b_id)
        assert await conn.fetchval("SELECT current_setting('app.tenant_id')") == str(pair.b_id)
        ids = {r["id"] for r in await conn.fetch("SELECT id FROM account")}
        assert ids == pair.b_accounts


@pytest.mark.parametrize("column", ["tenant_id", "id"])
async def test_key_columns_cannot_be_updated(
    databases: TestDatabases, pair: Pair, column: str
) -> None:
    target = next(iter(pair.a_accounts))
    async with app_role(databases, SHARD) as conn:
        # Even inside the tenant's own context, and even to the same tenant's id.
        value = pair.b_id if column == "tenant_id" else uuid.uuid4()
        state = await _sqlstate_of(
            conn,
            _set_local(pair.a_id)
            + f"; UPDATE account SET {column} = '{value}' WHERE id = '{target}'",
        )
        assert state == "42501"  # permission denied (column privilege)
    async with superuser(databases, SHARD) as su:
        row = await su.fetchrow("SELECT tenant_id FROM account WHERE id = $1", target)
    assert row is not None
    assert row["tenant_id"] == pair.a_id


async def test_app_role_cannot_touch_residency(databases: TestDatabases, pair: Pair) -> None:
    # Only the SECURITY DEFINER functions read or write the fence.
    async with app_role(databases, SHARD) as conn:
        for statement in (
            "SELECT * FROM tenant_residency",
            "UPDATE tenant_residency SET writable = true, epoch = 99",
            "DELETE FROM tenant_residency",
            f"INSERT INTO tenant_residency (tenant_id, epoch) VALUES ('{uuid.uuid4()}', 1)",
        ):
            state = await _sqlstate_of(conn, _set_local(pair.a_id) + "; " + statement)
            assert state == "42501", statement


async def test_enter_tenant_not_resident_is_mr003(
    databases: TestDatabases, pair: Pair, other_tenant: Tenant
) -> None:
    assert other_tenant.shard_id != SHARD
    async with app_role(databases, SHARD) as conn:
        for write in (False, True):
            # A tenant nobody knows, and a real tenant that lives on the other shard.
            for tenant_id in (uuid.uuid4(), uuid.UUID(other_tenant.id)):
                state = await _sqlstate_of(
                    conn, "SELECT meridian_enter_tenant($1, 1, $2)", tenant_id, write
                )
                assert state == "MR003", (tenant_id, write)
        state = await _sqlstate_of(conn, "SELECT meridian_enter_tenant($1, 1, false)", None)
        assert state == "MR003"


async def test_enter_tenant_wrong_epoch_is_mr001(databases: TestDatabases, pair: Pair) -> None:
    async with app_role(databases, SHARD) as conn:
        for epoch in (0, 2, 99):
            for write in (False, True):
                state = await _sqlstate_of(
                    conn, "SELECT meridian_enter_tenant($1, $2, $3)", pair.a_id, epoch, write
                )
                assert state == "MR001", (epoch, write)


async def test_enter_tenant_fenced_write_is_mr002(databases: TestDatabases, pair: Pair) -> None:
    async with superuser(databases, SHARD) as su:
        await su.execute(
            "UPDATE tenant_residency SET writable = false WHERE tenant_id = $1", pair.a_id
        )
        try:
            async with app_role(databases, SHARD) as conn:
                state = await _sqlstate_of(
                    conn, "SELECT meridian_enter_tenant($1, 1, true)", pair.a_id
                )
                assert state == "MR002"
                # Reads go on while writes are fenced.
                async with conn.transaction():
                    await conn.execute("SELECT meridian_enter_tenant($1, 1, false)", pair.a_id)
                    assert await conn.fetchval("SELECT count(*) FROM account") == len(
                        pair.a_accounts
                    )
                # The other tenant on the same shard is not fenced.
                async with conn.transaction():
                    await conn.execute("SELECT meridian_enter_tenant($1, 1, true)", pair.b_id)
        finally:
            await su.execute(
                "UPDATE tenant_residency SET writable = true WHERE tenant_id = $1", pair.a_id
            )
    async with app_role(databases, SHARD) as conn, conn.transaction():
        await conn.execute("SELECT meridian_enter_tenant($1, 1, true)", pair.a_id)


async def test_failed_enter_leaves_no_context(databases: TestDatabases, pair: Pair) -> None:
    # The function sets the context before checking residency; a refusal must not leave
    # it behind (the transaction is aborted, and SET LOCAL dies with it).
    async with app_role(databases, SHARD) as conn:
        state = await _sqlstate_of(conn, "SELECT meridian_enter_tenant($1, 7, false)", pair.a_id)
        assert state == "MR001"
        assert await conn.fetchval("SELECT current_setting('app.tenant_id', true)") in (None, "")
        assert await conn.fetchval("SELECT count(*) FROM account") == 0


@pytest.mark.parametrize("end", ["commit", "rollback"])
async def test_context_does_not_leak_to_next_transaction(
    databases: TestDatabases, pair: Pair, end: str
) -> None:
    async with app_role(databases, SHARD) as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT meridian_enter_tenant($1, 1, false)", pair.a_id)
        assert await conn.fetchval("SELECT count(*) FROM account") == len(pair.a_accounts)
        await (tx.commit() if end == "commit" else tx.rollback())
        # Same connection (as a pooled one would be), next transaction: nothing visible.
        async with conn.transaction():
            assert await conn.fetchval("SELECT count(*) FROM account") == 0
            assert await conn.fetchval("SELECT current_setting('app.tenant_id', true)") in (
                None,
                "",
            )
        # And outside any explicit transaction.
        assert await conn.fetchval("SELECT count(*) FROM account") == 0
