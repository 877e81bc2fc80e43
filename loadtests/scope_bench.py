"""Cost of the record-scope predicate: the scoped list query against the same query
without scope, on a tenant with 10,000 contacts and a 4-level reporting line.

    .venv/bin/python -m loadtests.scope_bench [--contacts 10000] [--runs 300] [--keep]
        [--pool-setting]

It creates a throwaway shard database on the local PostgreSQL (superuser from
MERIDIAN_TEST_PG_USER, default postgres), migrates it with the shard tree, seeds one
tenant (1 CEO, 4 VPs, 16 managers, 128 reps: 149 users; 90 % of the contacts owned by
reps, the rest by their managers; 300 shares to users and teams), then runs the reads
as the API runs them (``ContactRepository.fetch_scoped_page`` and ``fetch_visible``:
the same statements, compiled as the read path compiles them, the same SET LOCAL) as
the app role inside the tenant (``BEGIN READ ONLY; SELECT meridian_enter_tenant(...)``
first, like ``ShardRouter.reader``). Actors take turns on one connection, as on a pooled
API connection, so plan caching is what production gets. Each table shows the median
and p95, over ``--runs`` rounds, of the time spent inside the transaction after entering
the tenant, in milliseconds. It also compares the shape used with ``visible_to`` alone
as the WHERE clause, and with the shares as a hashed ``IN`` set instead of a per-row
``EXISTS``. ``--pool-setting`` measures what a read pool with ``plan_cache_mode =
force_generic_plan`` on its connections would save (the SET LOCAL round trip).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import ColumnElement, or_

from authz.scope import shared_with, subordinates
from meridian.contacts.models import Contact
from meridian.contacts.repository import SORTABLE, ContactRepository
from meridian.crud.compiled import compile_statement
from meridian.crud.pagination import parse_sort
from meridian.crud.repository import TenantRepository
from meridian.ids import new_id
from meridian.migrate import upgrade

PG_HOST = os.environ.get("MERIDIAN_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MERIDIAN_TEST_PG_PORT", "5432"))
PG_SUPERUSER = os.environ.get("MERIDIAN_TEST_PG_USER", "postgres")
APP_ROLE = "meridian_app"
DATABASE = "meridian_scope_bench"
LIMIT = 50


def raw_dsn(db: str, user: str = PG_SUPERUSER) -> str:
    return f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{db}"


# -- the tenant ---------------------------------------------------------------------------
@dataclass
class Org:
    tenant: uuid.UUID
    ceo: uuid.UUID
    vps: list[uuid.UUID]
    managers: list[uuid.UUID]
    reps: list[uuid.UUID]
    parent: dict[uuid.UUID, uuid.UUID | None]


def build_org(tenant: uuid.UUID) -> Org:
    ceo = new_id()
    parent: dict[uuid.UUID, uuid.UUID | None] = {ceo: None}
    vps = [new_id() for _ in range(4)]
    managers: list[uuid.UUID] = []
    reps: list[uuid.UUID] = []
    for vp in vps:
        parent[vp] = ceo
        for _ in range(4):
            manager = new_id()
            parent[manager] = vp
            managers.append(manager)
            for _ in range(8):
                rep = new_id()
                parent[rep] = manager
                reps.append(rep)
    return Org(tenant, ceo, vps, managers, reps, parent)


def closure_rows(org: Org) -> list[tuple[Any, ...]]:
    rows = []
    for user in org.parent:
        node: uuid.UUID | None = user
        depth = 0
        while node is not None:
            rows.append((org.tenant, node, user, depth))
            node = org.parent[node]
            depth += 1
    return rows


async def prepare(contacts: int, seed: int) -> Org:
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
    rng = random.Random(seed)  # noqa: S311 - reproducible data, not secrets
    org = build_org(new_id())
    tid = org.tenant
    conn = await asyncpg.connect(raw_dsn(DATABASE))
    try:
        async with conn.transaction():
            await conn.execute("SELECT meridian_admit_tenant($1, 1)", tid)
            users = [
                (tid, u, f"{u.hex}@bench.test", "U", "sales_rep", m, True)
                for u, m in org.parent.items()
            ]
            # build_org lists managers before their reports (the manager foreign key).
            await conn.copy_records_to_table(
                "app_user",
                records=users,
                columns=["tenant_id", "id", "email", "name", "role", "manager_id", "active"],
            )
            await conn.copy_records_to_table(
                "user_closure",
                records=closure_rows(org),
                columns=["tenant_id", "ancestor_id", "descendant_id", "depth"],
            )
            start = datetime(2025, 1, 1, tzinfo=UTC)
            names = ["Smith", "Jones", "Garcia", "Chen", "Okafor", "Novak", "Silva", "Kim"]
            rows = []
            for i in range(contacts):
                owner = rng.choice(org.reps) if rng.random() < 0.9 else rng.choice(org.managers)
                at = start + timedelta(minutes=i * 7 + rng.randrange(5))
                rows.append((tid, new_id(), "F", f"{rng.choice(names)}{i % 97}", owner, at, at))
            await conn.copy_records_to_table(
                "contact",
                records=rows,
                columns=[
                    "tenant_id",
                    "id",
                    "first_name",
                    "last_name",
                    "owner_id",
                    "created_at",
                    "updated_at",
                ],
            )
            everyone = list(org.parent)
            shares: set[tuple[uuid.UUID, uuid.UUID, bool]] = set()
            while len(shares) < 300:
                record = rng.choice(rows)[1]
                grantee = rng.choice(everyone)
                shares.add((record, grantee, rng.random() < 0.3))
            await conn.copy_records_to_table(
                "record_share",
                records=[
                    (tid, new_id(), "contact", rec, None if team else who, who if team else None)
                    for rec, who, team in shares
                ],
                columns=["tenant_id", "id", "record_kind", "record_id", "user_id", "team_id"],
            )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return org


# -- the statements -------------------------------------------------------------------------
Shape = str  # "scoped" (what the API runs), "one predicate", "hashed shares"


def hashed_shares_form(tenant_id: uuid.UUID, user_id: uuid.UUID) -> ColumnElement[bool]:
    """The predicate with the user's shared ids as one hashed set (the form not taken)."""
    shared = Contact.id.in_(shared_with(tenant_id, "contact", user_id))
    return or_(Contact.owner_id.in_(subordinates(tenant_id, user_id)), shared)


Query = Callable[[asyncpg.Connection], Awaitable[list[Any]]]


def api_page(tenant_id: uuid.UUID, user: uuid.UUID | None, sort_token: str) -> Query:
    """The list read exactly as the API runs it (``fetch_scoped_page``)."""
    sort = parse_sort(sort_token, SORTABLE, "created_at")

    async def query(conn: asyncpg.Connection) -> list[Any]:
        return await ContactRepository.fetch_scoped_page(
            conn, tenant_id, user, where=[], sort=sort, limit=LIMIT, cursor=None
        )

    return query


def shape_page(tenant_id: uuid.UUID, user: uuid.UUID, shape: Shape) -> Query:
    """A scoped first page (sort=-created_at) in one of the shapes compared, each under
    generic plans like the API's (so the shapes, not plan caching, are compared)."""
    sort = parse_sort("-created_at", SORTABLE, "created_at")
    if shape == "scoped":
        stmt = ContactRepository.scoped_page_statement(
            tenant_id, user, where=[], sort=sort, limit=LIMIT, cursor=None
        )
    else:
        predicate = (
            hashed_shares_form(tenant_id, user)
            if shape == "hashed shares"
            else ContactRepository.visibility(tenant_id, user)
        )
        assert predicate is not None
        stmt = ContactRepository.page_statement(
            tenant_id, where=[predicate], sort=sort, limit=LIMIT, cursor=None
        )
    sql, args = compile_statement(stmt)

    async def query(conn: asyncpg.Connection) -> list[Any]:
        if TenantRepository.set_generic_plans:
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        rows: list[Any] = await conn.fetch(sql, *args)
        return rows

    return query


def api_one(tenant_id: uuid.UUID, record_id: uuid.UUID, user: uuid.UUID | None) -> Query:
    """The by-id read as the API runs it (``fetch_visible``)."""

    async def query(conn: asyncpg.Connection) -> list[Any]:
        row = await ContactRepository.fetch_visible(conn, tenant_id, record_id, user)
        return [row] if row is not None else []

    return query


@dataclass
class Stats:
    median: float
    p95: float
    rows: int


async def interleaved(
    conn: asyncpg.Connection, tenant: uuid.UUID, queries: dict[str, Query], runs: int
) -> dict[str, Stats]:
    """Runs every actor's query in turn, ``runs`` rounds, on one connection with
    asyncpg's statement cache, as a pooled API connection serves every user. The time
    is everything done inside the read transaction after entering the tenant."""
    enter = f"BEGIN READ ONLY; SELECT meridian_enter_tenant('{tenant}'::uuid, 1, false)"
    samples: dict[str, list[float]] = {name: [] for name in queries}
    rows: dict[str, int] = {}
    warmup = 20
    for i in range(runs + warmup):
        for name, query in queries.items():
            await conn.execute(enter)
            t0 = time.perf_counter()
            result = await query(conn)
            elapsed = (time.perf_counter() - t0) * 1000
            await conn.execute("COMMIT")
            if i >= warmup:
                samples[name].append(elapsed)
            rows[name] = len(result)
    out = {}
    for name, values in samples.items():
        values.sort()
        out[name] = Stats(
            statistics.median(values), values[int(len(values) * 0.95) - 1], rows[name]
        )
    return out


def visible_count(org: Org, user: uuid.UUID | None) -> str:
    if user is None:
        return "all"
    below = [u for u in org.parent if _under(org, u, user)]
    return f"{len(below)} users"


def _under(org: Org, user: uuid.UUID, top: uuid.UUID) -> bool:
    node: uuid.UUID | None = user
    while node is not None:
        if node == top:
            return True
        node = org.parent[node]
    return False


async def run(contacts: int, runs: int, seed: int, pool_setting: bool) -> None:
    started = time.perf_counter()
    org = await prepare(contacts, seed)
    print(
        f"seeded {contacts} contacts, {len(org.parent)} users, 300 shares "
        f"in {time.perf_counter() - started:.1f} s; {runs} rounds per table\n"
    )
    tid = org.tenant
    rng = random.Random(seed + 1)  # noqa: S311 - picks actors
    actors: dict[str, uuid.UUID | None] = {
        "unscoped (admin/client)": None,
        "CEO (level 1)": org.ceo,
        "VP (level 2)": rng.choice(org.vps),
        "manager (level 3)": rng.choice(org.managers),
        "rep (level 4)": rng.choice(org.reps),
    }
    if pool_setting:
        # What a read pool with the setting would do: no SET LOCAL per scoped list.
        TenantRepository.set_generic_plans = False
        conn = await asyncpg.connect(
            raw_dsn(DATABASE, APP_ROLE),
            server_settings={"plan_cache_mode": "force_generic_plan"},
        )
    else:
        conn = await asyncpg.connect(raw_dsn(DATABASE, APP_ROLE))
    try:
        for title, sort_token in (
            ("newest first (sort=-created_at)", "-created_at"),
            ("by name (sort=last_name)", "last_name"),
        ):
            print(f"### Contacts list, first page, {title}, limit {LIMIT}\n")
            print("| actor | sees | rows | median ms | p95 ms | vs unscoped (median) |")
            print("|---|---|---|---|---|---|")
            queries = {name: api_page(tid, user, sort_token) for name, user in actors.items()}
            stats = await interleaved(conn, tid, queries, runs)
            base = stats["unscoped (admin/client)"].median
            for name, user in actors.items():
                st = stats[name]
                print(
                    f"| {name} | {visible_count(org, user)} | {st.rows} | {st.median:.3f} "
                    f"| {st.p95:.3f} | {(st.median / base - 1) * 100:+.0f} % |"
                )
            print()

        print("### Shapes of the scoped list (sort=-created_at), median ms\n")
        print(
            "| actor | two branches (used) | visible_to alone "
            "| visible_to with shares as a hashed IN set |"
        )
        print("|---|---|---|---|")
        results = {}
        for shape in ("scoped", "one predicate", "hashed shares"):
            queries = {
                name: shape_page(tid, user, shape)
                for name, user in actors.items()
                if user is not None
            }
            results[shape] = await interleaved(conn, tid, queries, runs)
        for name, user in actors.items():
            if user is None:
                continue
            cells = " | ".join(
                f"{results[shape][name].median:.3f}"
                for shape in ("scoped", "one predicate", "hashed shares")
            )
            print(f"| {name} | {cells} |")
        print()

        print("### Single record by id (one the actor may see)\n")
        print("| actor | median ms | p95 ms | vs unscoped (median) |")
        print("|---|---|---|---|")
        by_id: dict[str, Query] = {}
        for name, user in actors.items():
            await conn.execute(
                f"BEGIN READ ONLY; SELECT meridian_enter_tenant('{tid}'::uuid, 1, false)"
            )
            record = await conn.fetchval(
                "SELECT c.id FROM contact c JOIN user_closure uc ON uc.tenant_id = c.tenant_id"
                " AND uc.descendant_id = c.owner_id WHERE c.tenant_id = $1 AND uc.ancestor_id"
                " = $2 LIMIT 1",
                tid,
                user or org.reps[0],
            )
            await conn.execute("COMMIT")
            by_id[name] = api_one(tid, record, user)
        stats = await interleaved(conn, tid, by_id, runs)
        base = stats["unscoped (admin/client)"].median
        for name in actors:
            st = stats[name]
            assert st.rows == 1
            print(
                f"| {name} | {st.median:.3f} | {st.p95:.3f} "
                f"| {(st.median / base - 1) * 100:+.0f} % |"
            )
        print()
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--keep", action="store_true", help=f"keep the {DATABASE} database for inspection"
    )
    parser.add_argument(
        "--pool-setting",
        action="store_true",
        help="connect with plan_cache_mode=force_generic_plan instead of SET LOCAL per list",
    )
    args = parser.parse_args()
    asyncio.run(run(args.contacts, args.runs, args.seed, args.pool_setting))
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
