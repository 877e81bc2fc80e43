"""Lists filtered and sorted by custom fields, against the same lists on built-in
columns, on one tenant with many accounts.

    .venv/bin/python -m loadtests.bench.custom_fields [--accounts 200000] [--runs 200] [--keep]

It creates a throwaway shard database on the local PostgreSQL (superuser from
MERIDIAN_TEST_PG_USER, default postgres), migrates it, and gives one tenant
``--accounts`` accounts with three custom fields: ``region`` (a picklist of four values,
on 90 % of them), ``arr`` (a currency, on 80 %, spread over 0-1,000,000) and ``renewal``
(a date, on 60 %). The values are in the accounts' ``custom`` and in ``custom_value``,
as the API writes them. It then runs the API's own page statements (the filter parser,
``TenantRepository.page_statement`` and ``fetch_custom_sorted``, compiled as the read
path compiles them) as the app role inside the tenant, interleaved on one connection,
and prints the median and p95 in milliseconds of each page of 50, with the plan's
index use. The reference rows are the same shapes on built-in columns.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson

from meridian.accounts.models import Account
from meridian.accounts.repository import FILTERABLE, SORTABLE, AccountRepository
from meridian.crud import custom
from meridian.crud.compiled import compile_statement
from meridian.crud.endpoints import CUSTOM_PLANS
from meridian.crud.filters import parse_filter
from meridian.crud.pagination import Cursor, Sort, parse_sort
from meridian.ids import new_id
from meridian.migrate import upgrade

PG_HOST = os.environ.get("MERIDIAN_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MERIDIAN_TEST_PG_PORT", "5432"))
PG_SUPERUSER = os.environ.get("MERIDIAN_TEST_PG_USER", "postgres")
APP_ROLE = "meridian_app"
DATABASE = "meridian_custom_fields_bench"
LIMIT = 50
Query = Callable[[asyncpg.Connection], Awaitable[list[Any]]]


def raw_dsn(db: str, user: str = PG_SUPERUSER) -> str:
    return f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{db}"


FIELDS = {
    "region": ("picklist", {"values": ["EMEA", "Americas", "APAC", "LATAM"]}),
    "arr": ("currency", {"currency": "EUR"}),
    "renewal": ("date", {}),
}


async def prepare(accounts: int) -> tuple[uuid.UUID, dict[str, uuid.UUID]]:
    admin = await asyncpg.connect(raw_dsn("postgres"))
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", APP_ROLE):
            await admin.execute(f"CREATE ROLE {APP_ROLE} LOGIN NOBYPASSRLS")
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    await upgrade(
        "shard",
        f"postgresql+asyncpg://{PG_SUPERUSER}@{PG_HOST}:{PG_PORT}/{DATABASE}",
        app_role=APP_ROLE,
    )
    tenant = new_id()
    ids = {name: new_id() for name in FIELDS}
    conn = await asyncpg.connect(raw_dsn(DATABASE))
    try:
        async with conn.transaction():
            await conn.execute("SELECT meridian_admit_tenant($1, 1)", tenant)
            for name, (kind, options) in FIELDS.items():
                await conn.execute(
                    "INSERT INTO field_definition (tenant_id, id, object, name, label, type, "
                    "options) VALUES ($1, $2, 'account', $3, $3, $4, $5::jsonb)",
                    tenant,
                    ids[name],
                    name,
                    kind,
                    orjson.dumps(options).decode(),
                )
            # Deterministic values from the row number: region on 90 %, arr on 80 %,
            # renewal on 60 %; generated in SQL, the way a bulk load would write them.
            await conn.execute(
                """
                INSERT INTO account (tenant_id, id, name, created_at, updated_at, custom)
                SELECT $1, gen_random_uuid(), 'Account ' || lpad(i::text, 7, '0'),
                       now() - make_interval(secs => i), now() - make_interval(secs => i),
                       jsonb_strip_nulls(jsonb_build_object(
                         'region', CASE WHEN i % 10 <> 0 THEN
                           (ARRAY['EMEA','Americas','APAC','LATAM'])[1 + i % 4] END,
                         'arr', CASE WHEN i % 5 <> 0 THEN
                           to_char((i * 7919) % 1000000, 'FM9999999') || '.00' END,
                         'renewal', CASE WHEN i % 5 < 3 THEN
                           to_char(date '2027-01-01' + (i % 365), 'YYYY-MM-DD') END))
                  FROM generate_series(1, $2) AS i
                """,
                tenant,
                accounts,
            )
            await conn.execute(
                """
                INSERT INTO custom_value (tenant_id, field_id, record_id, text_value)
                SELECT tenant_id, $2, id, custom->>'region' FROM account
                 WHERE tenant_id = $1 AND custom ? 'region'
                """,
                tenant,
                ids["region"],
            )
            await conn.execute(
                """
                INSERT INTO custom_value (tenant_id, field_id, record_id, number_value)
                SELECT tenant_id, $2, id, (custom->>'arr')::numeric FROM account
                 WHERE tenant_id = $1 AND custom ? 'arr'
                """,
                tenant,
                ids["arr"],
            )
            await conn.execute(
                """
                INSERT INTO custom_value (tenant_id, field_id, record_id, date_value)
                SELECT tenant_id, $2, id, (custom->>'renewal')::date FROM account
                 WHERE tenant_id = $1 AND custom ? 'renewal'
                """,
                tenant,
                ids["renewal"],
            )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return tenant, ids


def _fields(ids: dict[str, uuid.UUID]) -> list[custom.Field]:
    return [
        custom.Field(ids[name], name, kind, False, False, None, options)
        for name, (kind, options) in FIELDS.items()
    ]


def page(tenant: uuid.UUID, ids: dict[str, uuid.UUID], flt: str | None, sort: Sort) -> Query:
    """The list's page as ``endpoints.listing`` reads it (unscoped: an admin)."""
    resolver = custom.filter_fields(_fields(ids), tenant, Account.id)
    found = parse_filter(flt, FILTERABLE, custom=resolver)
    where = list(found.where)

    async def run(conn: asyncpg.Connection) -> list[Any]:
        if found.elsewhere or sort.custom is not None:
            await conn.execute(CUSTOM_PLANS)  # as endpoints.listing does
        if sort.custom is not None:
            return await AccountRepository.fetch_custom_sorted(
                conn, tenant, None, where=where, sort=sort, limit=LIMIT, cursor=None
            )
        stmt = AccountRepository.page_statement(
            tenant, where=where, sort=sort, limit=LIMIT, cursor=None
        )
        sql, args = compile_statement(stmt)
        return list(await conn.fetch(sql, *args))

    return run


async def deep_cursor(
    conn: asyncpg.Connection, tenant: uuid.UUID, sort: Sort, pages: int
) -> Cursor | None:
    """The cursor ``pages`` pages into a custom sort (to time a page far from the start)."""
    cursor: Cursor | None = None
    await conn.execute(f"BEGIN READ ONLY; SELECT meridian_enter_tenant('{tenant}'::uuid, 1, false)")
    for _ in range(pages):
        rows = await AccountRepository.fetch_custom_sorted(
            conn, tenant, None, where=[], sort=sort, limit=LIMIT, cursor=cursor
        )
        last = rows[LIMIT - 1]
        cursor = Cursor(sort.token, sort.value_of(last), last["id"], "")
    await conn.execute("COMMIT")
    return cursor


async def measure(
    conn: asyncpg.Connection, tenant: uuid.UUID, queries: dict[str, Query], runs: int
) -> dict[str, tuple[float, float, int]]:
    enter = f"BEGIN READ ONLY; SELECT meridian_enter_tenant('{tenant}'::uuid, 1, false)"
    samples: dict[str, list[float]] = {name: [] for name in queries}
    rows: dict[str, int] = {}
    for i in range(runs + 10):
        for name, query in queries.items():
            await conn.execute(enter)
            t0 = time.perf_counter()
            result = await query(conn)
            elapsed = (time.perf_counter() - t0) * 1000
            await conn.execute("COMMIT")
            if i >= 10:
                samples[name].append(elapsed)
            rows[name] = len(result)
    out = {}
    for name, values in samples.items():
        values.sort()
        out[name] = (statistics.median(values), values[int(len(values) * 0.95) - 1], rows[name])
    return out


async def run(accounts: int, runs: int) -> None:
    started = time.perf_counter()
    tenant, ids = await prepare(accounts)
    print(
        f"seeded {accounts} accounts with 3 custom fields in {time.perf_counter() - started:.1f} s"
    )
    fields = _fields(ids)
    created = parse_sort(None, SORTABLE, "-created_at")
    by_name = parse_sort("name", SORTABLE, "created_at")
    by_arr = custom.sort_by(fields, "arr", False)
    by_arr_desc = custom.sort_by(fields, "arr", True)
    assert by_arr is not None
    assert by_arr_desc is not None
    queries: dict[str, Query] = {
        "no filter, newest first (reference)": page(tenant, ids, None, created),
        "built-in name[starts]:Account 00001 (reference)": page(
            tenant, ids, 'name[starts]:"Account 00001"', created
        ),
        "custom.region[eq]:APAC": page(tenant, ids, "custom.region[eq]:APAC", created),
        "custom.arr[gte]:990000 (1 %)": page(tenant, ids, "custom.arr[gte]:990000", created),
        "and(region eq EMEA, renewal in January)": page(
            tenant,
            ids,
            "and(custom.region[eq]:EMEA,custom.renewal[gte]:2027-01-01,"
            "custom.renewal[lt]:2027-02-01)",
            created,
        ),
        "custom.region[null]:true (10 %)": page(tenant, ids, "custom.region[null]:true", created),
        "sort by name (reference)": page(tenant, ids, None, by_name),
        "sort by custom.arr": page(tenant, ids, None, by_arr),
        "sort by -custom.arr": page(tenant, ids, None, by_arr_desc),
    }
    # As a read pool of a PostgreSQL shard connects (sharding.engine traits).
    conn = await asyncpg.connect(
        raw_dsn(DATABASE, APP_ROLE), server_settings={"plan_cache_mode": "force_generic_plan"}
    )
    try:
        deep = await deep_cursor(conn, tenant, by_arr, 200)

        async def deep_page(c: asyncpg.Connection) -> list[Any]:
            await c.execute(CUSTOM_PLANS)
            return await AccountRepository.fetch_custom_sorted(
                c, tenant, None, where=[], sort=by_arr, limit=LIMIT, cursor=deep
            )

        queries["sort by custom.arr, page 201"] = deep_page
        results = await measure(conn, tenant, queries, runs)
    finally:
        await conn.close()
    print(f"\n{'page of 50':48} {'median ms':>10} {'p95 ms':>8} {'rows':>5}")
    for name, (median, p95, rows) in results.items():
        print(f"{name:48} {median:10.2f} {p95:8.2f} {rows:5}")
    admin = await asyncpg.connect(raw_dsn(DATABASE))
    try:
        size = await admin.fetchval("SELECT pg_size_pretty(pg_total_relation_size('custom_value'))")
        count = await admin.fetchval("SELECT count(*) FROM custom_value")
    finally:
        await admin.close()
    print(f"\ncustom_value: {count} rows, {size} with its indexes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help=f"keep the {DATABASE} database")
    args = parser.parse_args()
    asyncio.run(run(args.accounts, args.runs))
    if not args.keep:
        asyncio.run(drop())


async def drop() -> None:
    admin = await asyncpg.connect(raw_dsn("postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    finally:
        await admin.close()


if __name__ == "__main__":
    main()
