"""The app-layer tenant scoping, proven without RLS, and the router's stale-epoch re-route.

Sessions here run on a SUPERUSER engine (RLS does not apply to superusers), so only the
ORM tenant criteria of ``ShardSession`` stands between tenant A's session and B's rows.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import aliased

from meridian.accounts.models import Account, AccountRow
from meridian.accounts.repository import AccountRepository
from meridian.crud.pagination import Sort
from meridian.crud.repository import TenantRepository, VersionMismatch
from sharding.engines import PoolOptions, ShardEngines, ShardInfo
from sharding.errors import ResidencyError
from sharding.router import ShardRouter, ShardSession
from tenancy.context import TenantContext
from tests.fixtures.shard_db import (
    Pair,
    app_dsn,
    context_of,
    make_pair,
    superuser,
    superuser_dsn,
)

if TYPE_CHECKING:
    from tests.fixtures.databases import TestDatabases

SHARD = "us-1"


class GenericAccounts(TenantRepository[AccountRow]):
    """The base repository with nothing of AccountRepository's own."""

    model = Account


@pytest.fixture
async def pair(app_client: httpx.AsyncClient, admin_headers: dict[str, str]) -> Pair:
    return await make_pair(app_client, admin_headers, SHARD, "scope")


@pytest.fixture
async def su_engine(databases: TestDatabases) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(superuser_dsn(databases, SHARD), pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def router(databases: TestDatabases) -> AsyncIterator[ShardRouter]:
    """A router of its own (app role) over both shards."""
    engines = ShardEngines(
        [
            ShardInfo("us-1", "us", app_dsn(databases, "us-1")),
            ShardInfo("eu-1", "eu", app_dsn(databases, "eu-1")),
        ]
    )
    try:
        yield ShardRouter(engines)
    finally:
        await engines.dispose()


def scoped(engine: AsyncEngine, tenant_id: uuid.UUID | None) -> AsyncSession:
    info: dict[str, Any] = {} if tenant_id is None else {"tenant_id": tenant_id}
    return AsyncSession(engine, sync_session_class=ShardSession, info=info, expire_on_commit=False)


async def _names(databases: TestDatabases, tenant_id: uuid.UUID) -> dict[uuid.UUID, str]:
    async with superuser(databases, SHARD) as su:
        rows = await su.fetch("SELECT id, name FROM account WHERE tenant_id = $1", tenant_id)
    return {r["id"]: r["name"] for r in rows}


# -- the engine really bypasses RLS ---------------------------------------------------


async def test_superuser_engine_sees_both_tenants(su_engine: AsyncEngine, pair: Pair) -> None:
    async with AsyncSession(su_engine) as plain:
        rows = (
            await plain.execute(
                select(Account.tenant_id, Account.id).where(
                    Account.tenant_id.in_([pair.a_id, pair.b_id])
                )
            )
        ).all()
    assert {r.id for r in rows} == pair.a_accounts | pair.b_accounts


# -- SELECT ---------------------------------------------------------------------------


async def test_orm_select_without_filter_is_scoped(su_engine: AsyncEngine, pair: Pair) -> None:
    async with scoped(su_engine, pair.a_id) as session:
        accounts = (await session.scalars(select(Account))).all()
        assert {a.id for a in accounts} == pair.a_accounts
        assert {a.tenant_id for a in accounts} == {pair.a_id}
        ids = set((await session.scalars(select(Account.id))).all())
        assert ids == pair.a_accounts
        count = await session.scalar(select(func.count()).select_from(Account))
        assert count == len(pair.a_accounts)


async def test_orm_select_naming_other_tenant_finds_nothing(
    su_engine: AsyncEngine, pair: Pair
) -> None:
    b_ids = list(pair.b_accounts)
    async with scoped(su_engine, pair.a_id) as session:
        assert (await session.scalars(select(Account).where(Account.id.in_(b_ids)))).all() == []
        by_tenant = select(Account.id).where(Account.tenant_id == pair.b_id)
        assert (await session.scalars(by_tenant)).all() == []
        # Identity look-up by B's full primary key.
        assert await session.get(Account, (pair.b_id, b_ids[0])) is None


async def test_aliases_and_joins_are_scoped(su_engine: AsyncEngine, pair: Pair) -> None:
    other = aliased(Account)
    async with scoped(su_engine, pair.a_id) as session:
        assert set((await session.scalars(select(other.id))).all()) == pair.a_accounts
        # A join on id alone (no tenant equality) must not reach B's rows on either side.
        joined = (
            await session.execute(select(Account.id, other.id).join(other, other.id != Account.id))
        ).all()
        seen = {r[0] for r in joined} | {r[1] for r in joined}
        assert seen == pair.a_accounts
        subq = select(other.id).where(other.id.in_(list(pair.b_accounts))).scalar_subquery()
        assert (await session.scalars(select(Account.id).where(Account.id == subq))).all() == []


# -- UPDATE / DELETE ------------------------------------------------------------------


async def test_bulk_update_without_where_is_scoped(
    databases: TestDatabases, su_engine: AsyncEngine, pair: Pair
) -> None:
    async with scoped(su_engine, pair.a_id) as session, session.begin():
        result = await session.execute(update(Account).values(name="x"))
        assert result.rowcount == len(pair.a_accounts)  # type: ignore[attr-defined]
    assert set((await _names(databases, pair.a_id)).values()) == {"x"}
    assert "x" not in set((await _names(databases, pair.b_id)).values())


async def test_bulk_update_naming_other_tenant_changes_nothing(
    databases: TestDatabases, su_engine: AsyncEngine, pair: Pair
) -> None:
    before = await _names(databases, pair.b_id)
    async with scoped(su_engine, pair.a_id) as session, session.begin():
        stmt = (
            update(Account)
            .where(Account.id.in_(list(pair.b_accounts)))
            .values(name="pwned")
            .execution_options(synchronize_session=False)
        )
        assert (await session.execute(stmt)).rowcount == 0  # type: ignore[attr-defined]
        stmt2 = update(Account).where(Account.tenant_id == pair.b_id).values(name="pwned")
        assert (await session.execute(stmt2)).rowcount == 0  # type: ignore[attr-defined]
    assert await _names(databases, pair.b_id) == before


async def test_bulk_delete_without_where_is_scoped(
    databases: TestDatabases, su_engine: AsyncEngine, pair: Pair
) -> None:
    before_b = await _names(databases, pair.b_id)
    async with scoped(su_engine, pair.a_id) as session, session.begin():
        result = await session.execute(delete(Account))
        assert result.rowcount == len(pair.a_accounts)  # type: ignore[attr-defined]
    assert await _names(databases, pair.a_id) == {}
    assert await _names(databases, pair.b_id) == before_b


async def test_bulk_delete_naming_other_tenant_deletes_nothing(
    databases: TestDatabases, su_engine: AsyncEngine, pair: Pair
) -> None:
    before_b = await _names(databases, pair.b_id)
    async with scoped(su_engine, pair.a_id) as session, session.begin():
        stmt = delete(Account).where(Account.id.in_(list(pair.b_accounts)))
        assert (await session.execute(stmt)).rowcount == 0  # type: ignore[attr-defined]
    assert await _names(databases, pair.b_id) == before_b


# -- no tenant: fail closed -----------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param(lambda: select(Account), id="select"),
        pytest.param(lambda: select(Account.id), id="select-column"),
        pytest.param(lambda: update(Account).values(name="x"), id="update"),
        pytest.param(lambda: delete(Account), id="delete"),
    ],
)
@pytest.mark.parametrize("info", [{}, {"tenant_id": None}], ids=["missing", "none"])
async def test_session_without_tenant_refuses_queries(
    databases: TestDatabases,
    su_engine: AsyncEngine,
    pair: Pair,
    statement: Callable[[], Any],
    info: dict[str, Any],
) -> None:
    before = await _names(databases, pair.a_id)
    session = AsyncSession(su_engine, sync_session_class=ShardSession, info=info)
    async with session, session.begin():
        with pytest.raises(RuntimeError, match="without a tenant"):
            await session.execute(statement())
    assert await _names(databases, pair.a_id) == before


# -- every repository path, B's context with A's ids ----------------------------------

SessionFactory = Callable[[TenantContext], AbstractAsyncContextManager[AsyncSession]]


@pytest.fixture(params=["superuser-no-rls", "router-app-role"])
def tenant_session(
    request: pytest.FixtureRequest, su_engine: AsyncEngine, router: ShardRouter
) -> SessionFactory:
    """A session inside a tenant: on the superuser engine (only the ORM criteria scope
    it) or through the production router as the app role (RLS too)."""
    if request.param == "superuser-no-rls":

        @asynccontextmanager
        async def on_superuser(ctx: TenantContext) -> AsyncIterator[AsyncSession]:
            session = scoped(su_engine, ctx.tenant_id)
            async with session, session.begin():
                yield session

        return on_superuser

    def on_router(ctx: TenantContext) -> AbstractAsyncContextManager[AsyncSession]:
        return router.transaction(ctx, write=True)

    return on_router


@pytest.mark.parametrize("repo_class", [GenericAccounts, AccountRepository])
async def test_repository_reads_see_nothing_of_other_tenant(
    tenant_session: SessionFactory, pair: Pair, repo_class: type[TenantRepository[AccountRow]]
) -> None:
    b = context_of(pair.b)
    async with tenant_session(b) as session:
        repo = repo_class(session, b)
        for a_id in pair.a_accounts:
            assert await repo.get(a_id) is None
            assert await repo.exists(a_id) is False
        sort = Sort("name", Account.name, False)

        async def page(where: list[Any]) -> list[dict[str, Any]]:
            # A list in a session, as the request's own page statement.
            stmt = repo_class.scoped_page_statement(
                b.tenant_id, None, where=where, sort=sort, limit=50, cursor=None
            )
            return [dict(r) for r in (await session.execute(stmt)).mappings()]

        assert await page([Account.id.in_(list(pair.a_accounts))]) == []
        everything = await page([])
        assert {r["id"] for r in everything} == pair.b_accounts
        assert all("tenant_id" not in r for r in everything)


@pytest.fixture(params=["superuser-no-rls", "router-reader"])
def raw_reader(
    request: pytest.FixtureRequest, databases: TestDatabases, router: ShardRouter
) -> Callable[[TenantContext], AbstractAsyncContextManager[asyncpg.Connection]]:
    """A raw connection for the hot read path: the superuser's (only the statement's own
    tenant filter scopes it) or the production reader as the app role."""
    if request.param == "superuser-no-rls":

        @asynccontextmanager
        async def on_superuser(ctx: TenantContext) -> AsyncIterator[asyncpg.Connection]:
            async with superuser(databases, SHARD) as conn:
                yield conn

        return on_superuser
    return lambda ctx: router.reader(ctx)


@pytest.mark.parametrize("repo_class", [GenericAccounts, AccountRepository])
async def test_hot_read_paths_see_nothing_of_other_tenant(
    raw_reader: Callable[[TenantContext], AbstractAsyncContextManager[asyncpg.Connection]],
    pair: Pair,
    repo_class: type[TenantRepository[AccountRow]],
) -> None:
    b = context_of(pair.b)
    sort = Sort("created_at", Account.created_at, True)
    async with raw_reader(b) as conn:
        for a_id in pair.a_accounts:
            assert await repo_class.fetch_one(conn, pair.b_id, a_id) is None
        page = await repo_class.fetch_page(
            conn,
            pair.b_id,
            where=[Account.id.in_(list(pair.a_accounts))],
            sort=sort,
            limit=50,
            cursor=None,
        )
        assert page == []
        everything = await repo_class.fetch_page(
            conn, pair.b_id, where=[], sort=sort, limit=50, cursor=None
        )
        assert {r["id"] for r in everything} == pair.b_accounts
        assert all("tenant_id" not in r for r in everything)
    # The positive control: the same calls find A's rows for A.
    a_id = next(iter(pair.a_accounts))
    async with raw_reader(context_of(pair.a)) as conn:
        row = await repo_class.fetch_one(conn, pair.a_id, a_id)
        assert row is not None
        assert row["id"] == a_id


async def test_repository_writes_do_not_touch_other_tenant(
    databases: TestDatabases, tenant_session: SessionFactory, pair: Pair
) -> None:
    before_a = await _names(databases, pair.a_id)
    b = context_of(pair.b)
    a_id = next(iter(pair.a_accounts))
    async with tenant_session(b) as session:
        repo = GenericAccounts(session, b)
        for version in (None, 1, 99):
            assert await repo.update(a_id, {"name": "pwned"}, expected_version=version) is None
            assert await repo.delete(a_id, expected_version=version) is False
        # Inserting under B with A's id makes a row of B's; A's row is left alone.
        row = await repo.insert({"id": a_id, "name": "twin"})
        assert row["id"] == a_id
        # tenant_id cannot be smuggled in through the values.
        with pytest.raises(TypeError):
            await repo.insert({"id": uuid.uuid4(), "name": "smuggled", "tenant_id": pair.a_id})
    assert await _names(databases, pair.a_id) == before_a
    b_names = await _names(databases, pair.b_id)
    assert b_names[a_id] == "twin"
    assert "pwned" not in b_names.values()


async def test_repository_own_tenant_paths_work(tenant_session: SessionFactory, pair: Pair) -> None:
    # The positive control for the tests above: the same calls do work in A's context.
    a = context_of(pair.a)
    a_id = next(iter(pair.a_accounts))
    async with tenant_session(a) as session:
        repo = GenericAccounts(session, a)
        assert (await repo.get(a_id) or {}).get("id") == a_id
        assert await repo.exists(a_id) is True
        with pytest.raises(VersionMismatch):
            await repo.update(a_id, {"name": "renamed"}, expected_version=99)
        updated = await repo.update(a_id, {"name": "renamed"}, expected_version=1)
        assert updated is not None
        assert updated["version"] == 2
        with pytest.raises(VersionMismatch):
            await repo.delete(a_id, expected_version=1)
        assert await repo.delete(a_id, expected_version=2) is True


# -- stale directory entries ----------------------------------------------------------


async def _visible_accounts(session: AsyncSession) -> set[uuid.UUID]:
    return set((await session.scalars(select(Account.id))).all())


@pytest.mark.parametrize("write", [False, True])
async def test_stale_epoch_is_refused_by_the_shard(
    router: ShardRouter, pair: Pair, write: bool
) -> None:
    stale = context_of(pair.a, epoch=7)
    with pytest.raises(ResidencyError) as info:
        async with router.transaction(stale, write=write):
            pytest.fail("entered a tenant with a stale epoch")
    assert info.value.sqlstate == "MR001"
    assert info.value.stale


@pytest.mark.parametrize("write", [False, True])
async def test_stale_epoch_is_rerouted_through_on_stale(
    router: ShardRouter, pair: Pair, write: bool
) -> None:
    stale = context_of(pair.a, epoch=7)
    fresh = context_of(pair.a)
    asked: list[TenantContext] = []

    async def on_stale(ctx: TenantContext) -> TenantContext | None:
        asked.append(ctx)
        return fresh

    async with router.transaction(stale, write=write, on_stale=on_stale) as session:
        assert session.info["tenant_id"] == pair.a_id
        assert await _visible_accounts(session) == pair.a_accounts
    assert asked == [stale]


async def test_wrong_shard_is_rerouted_to_the_right_one(router: ShardRouter, pair: Pair) -> None:
    # A directory entry that still names the old shard after a move: not resident there.
    moved_away = context_of(pair.a, shard_id="eu-1")
    asked: list[TenantContext] = []

    async def on_stale(ctx: TenantContext) -> TenantContext | None:
        asked.append(ctx)
        return context_of(pair.a)

    async with router.transaction(moved_away, write=True, on_stale=on_stale) as session:
        assert await _visible_accounts(session) == pair.a_accounts
        shard_db = await session.scalar(text("SELECT current_database()"))
    assert asked == [moved_away]
    assert shard_db is not None
    assert shard_db.endswith("_us1")


@pytest.mark.parametrize("answer", ["same", "none", "still-stale"])
async def test_on_stale_without_a_fresh_entry_gives_up(
    router: ShardRouter, pair: Pair, answer: str
) -> None:
    stale = context_of(pair.a, epoch=7)
    calls = 0

    async def on_stale(ctx: TenantContext) -> TenantContext | None:
        nonlocal calls
        calls += 1
        if answer == "none":
            return None
        if answer == "same":
            return ctx
        return context_of(pair.a, epoch=8)

    with pytest.raises(ResidencyError) as info:
        async with router.transaction(stale, write=False, on_stale=on_stale):
            pytest.fail("entered a tenant with a stale epoch")
    assert info.value.sqlstate == "MR001"
    assert calls == 1  # retried at most once


@asynccontextmanager
async def _fenced(
    databases: TestDatabases, tenant_id: uuid.UUID
) -> AsyncIterator[asyncpg.Connection]:
    """The tenant's residency fenced (as a move's switch does) until the block ends or
    the block lifts it through the superuser connection it is given."""
    async with superuser(databases, SHARD) as su:
        await su.execute(
            "UPDATE tenant_residency SET writable = false WHERE tenant_id = $1", tenant_id
        )
        try:
            yield su
        finally:
            await su.execute(
                "UPDATE tenant_residency SET epoch = 1, writable = true WHERE tenant_id = $1",
                tenant_id,
            )


def _held_router(router: ShardRouter, hold: float) -> ShardRouter:
    return ShardRouter(router.engines, write_hold=hold)


async def test_a_write_to_a_fenced_tenant_is_held_then_refused(
    databases: TestDatabases, router: ShardRouter, pair: Pair
) -> None:
    """Held for the router's write_hold, then refused as read-only (the API's 503 with
    Retry-After), without asking for a re-route; reads are never held."""
    calls = 0

    async def on_stale(ctx: TenantContext) -> TenantContext | None:
        nonlocal calls
        calls += 1
        return ctx

    held = _held_router(router, 0.3)
    async with _fenced(databases, pair.a_id):
        started = asyncio.get_running_loop().time()
        with pytest.raises(ResidencyError) as info:
            async with held.transaction(context_of(pair.a), write=True, on_stale=on_stale):
                pytest.fail("wrote to a fenced tenant")
        assert asyncio.get_running_loop().time() - started >= 0.3
        assert info.value.read_only
        assert not info.value.stale
        assert calls == 0
        async with held.transaction(context_of(pair.a), write=False) as session:
            assert await _visible_accounts(session) == pair.a_accounts


async def test_a_held_write_goes_through_once_the_fence_lifts(
    databases: TestDatabases, router: ShardRouter, pair: Pair
) -> None:
    """A move rolled back unfences the source: the held write is written there."""
    held = _held_router(router, 30)
    async with _fenced(databases, pair.a_id) as su:

        async def lift() -> None:
            await asyncio.sleep(0.2)
            await su.execute(
                "UPDATE tenant_residency SET writable = true WHERE tenant_id = $1", pair.a_id
            )

        lifting = asyncio.create_task(lift())
        async with held.transaction(context_of(pair.a), write=True) as session:
            assert lifting.done()  # entered only after the fence lifted
            await session.execute(
                update(Account).where(Account.id.in_(pair.a_accounts)).values(name="held")
            )
        await lifting
    assert set((await _names(databases, pair.a_id)).values()) == {"held"}


async def test_a_held_write_follows_the_switch_to_the_new_epoch(
    databases: TestDatabases, router: ShardRouter, pair: Pair
) -> None:
    """A move's switch as a held write sees it: read-only (MR002), then the source's
    residency retired to the next epoch (MR001, stale), so the write re-resolves and is
    written at the new placement (here: the same shard at epoch 2)."""
    fresh = context_of(pair.a, epoch=2)

    async def on_stale(ctx: TenantContext) -> TenantContext | None:
        return fresh

    held = _held_router(router, 30)
    async with _fenced(databases, pair.a_id) as su:

        async def switch() -> None:
            await asyncio.sleep(0.2)
            await su.execute(
                "UPDATE tenant_residency SET epoch = 2, writable = true WHERE tenant_id = $1",
                pair.a_id,
            )

        switching = asyncio.create_task(switch())
        async with held.transaction(context_of(pair.a), write=True, on_stale=on_stale) as s:
            await s.execute(
                update(Account).where(Account.id.in_(pair.a_accounts)).values(name="switched")
            )
        await switching
    assert set((await _names(databases, pair.a_id)).values()) == {"switched"}


async def test_api_reroutes_after_the_epoch_moves_on(
    app_client: httpx.AsyncClient, databases: TestDatabases, pair: Pair
) -> None:
    """The app's directory cache still holds epoch 1 when the shard and the control plane
    have moved to epoch 2: the shard refuses, the router re-resolves, the request works."""
    first = await app_client.get("/v1/accounts", headers=pair.a.headers)  # caches epoch 1
    assert first.status_code == 200
    runtime = app_client.app.state.runtime  # type: ignore[attr-defined]
    cached = await runtime.directory.resolve(pair.a_id)
    assert cached.epoch == 1
    async with superuser(databases, SHARD) as su:
        await su.execute("UPDATE tenant_residency SET epoch = 2 WHERE tenant_id = $1", pair.a_id)
    control = create_async_engine(databases.settings().control_migrate_dsn)
    try:
        async with control.begin() as conn:
            await conn.execute(
                text("UPDATE tenant_directory SET epoch = 2 WHERE tenant_id = :t"),
                {"t": pair.a_id},
            )
    finally:
        await control.dispose()
    assert (await runtime.directory.resolve(pair.a_id)).epoch == 1  # still stale
    listed = await app_client.get("/v1/accounts", headers=pair.a.headers)
    assert listed.status_code == 200, listed.text
    assert {uuid.UUID(r["id"]) for r in listed.json()["data"]} == pair.a_accounts
    created = await app_client.post("/v1/accounts", json={"name": "after"}, headers=pair.a.headers)
    assert created.status_code == 201, created.text
    assert (await runtime.directory.resolve(pair.a_id)).epoch == 2


# -- the raw read path: re-route and no leaks between pooled connections --------------


async def test_reader_refuses_stale_epoch_and_reroutes(router: ShardRouter, pair: Pair) -> None:
    stale = context_of(pair.a, epoch=7)
    with pytest.raises(ResidencyError) as info:
        async with router.reader(stale):
            pytest.fail("entered a tenant with a stale epoch")
    assert info.value.sqlstate == "MR001"
    asked: list[TenantContext] = []

    async def on_stale(ctx: TenantContext) -> TenantContext | None:
        asked.append(ctx)
        return context_of(pair.a)

    async with router.reader(stale, on_stale=on_stale) as conn:
        rows = await conn.fetch("SELECT id FROM account")
    assert {r["id"] for r in rows} == pair.a_accounts
    assert asked == [stale]


async def test_reader_is_read_only(router: ShardRouter, pair: Pair) -> None:
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        async with router.reader(context_of(pair.a)) as conn:
            await conn.execute("UPDATE account SET name = 'x'")


@pytest.fixture
async def one_conn_router(databases: TestDatabases) -> AsyncIterator[ShardRouter]:
    """A reader pool of exactly one connection, so every use reuses the same one."""
    engines = ShardEngines(
        [ShardInfo(SHARD, "us", app_dsn(databases, SHARD))], PoolOptions(read_pool_size=1)
    )
    try:
        yield ShardRouter(engines)
    finally:
        await engines.dispose()


async def _leftover(router: ShardRouter) -> tuple[object, int, int]:
    """What the next user of the pooled connection would inherit."""
    pool = await router.engines.read_pool(SHARD)
    async with pool.acquire() as conn:
        return (
            await conn.fetchval("SELECT current_setting('app.tenant_id', true)"),
            await conn.fetchval("SELECT count(*) FROM account"),
            await conn.fetchval("SELECT pg_backend_pid()"),
        )


@pytest.mark.parametrize("ending", ["commit", "error", "stale"])
async def test_reader_leaves_no_tenant_on_the_pooled_connection(
    one_conn_router: ShardRouter, pair: Pair, ending: str
) -> None:
    router = one_conn_router
    pids = set()

    class Boom(Exception):
        pass

    if ending == "commit":
        async with router.reader(context_of(pair.a)) as conn:
            assert await conn.fetchval("SELECT count(*) FROM account") == len(pair.a_accounts)
            pids.add(await conn.fetchval("SELECT pg_backend_pid()"))
    elif ending == "error":

        async def fail_inside() -> None:
            async with router.reader(context_of(pair.a)) as conn:
                assert await conn.fetchval("SELECT count(*) FROM account") > 0
                pids.add(await conn.fetchval("SELECT pg_backend_pid()"))
                raise Boom

        with pytest.raises(Boom):
            await fail_inside()
    else:
        with pytest.raises(ResidencyError):
            async with router.reader(context_of(pair.a, epoch=7)):
                pytest.fail("entered a tenant with a stale epoch")
    setting, visible, pid = await _leftover(router)
    assert setting in (None, "")
    assert visible == 0
    # Really the same server connection (a stale epoch is refused before it is used).
    assert pids == (set() if ending == "stale" else {pid})
    # And the next tenant on that connection sees only its own rows.
    async with router.reader(context_of(pair.b)) as conn:
        ids = {r["id"] for r in await conn.fetch("SELECT id FROM account")}
    assert ids == pair.b_accounts


# -- the one-statement by-id read (ShardRouter.read_one) ---------------------------------


async def test_read_one_enters_the_tenant_before_rls_is_evaluated(
    one_conn_router: ShardRouter, pair: Pair
) -> None:
    """The lateral join runs the enter function first: the tenant's own row comes back
    (RLS saw the tenant), the other tenant's id does not, and nothing is left behind."""
    router = one_conn_router
    sql = AccountRepository.by_id_sql()
    own = next(iter(pair.a_accounts))
    foreign = next(iter(pair.b_accounts))
    row = await router.read_one(context_of(pair.a), sql, (own,))
    assert row is not None
    assert row["id"] == own
    assert await router.read_one(context_of(pair.a), sql, (foreign,)) is None
    setting, visible, _ = await _leftover(router)
    assert setting in (None, "")
    assert visible == 0


async def test_read_one_refuses_a_stale_epoch_and_reroutes(router: ShardRouter, pair: Pair) -> None:
    sql = AccountRepository.by_id_sql()
    own = next(iter(pair.a_accounts))
    stale = context_of(pair.a, epoch=7)
    with pytest.raises(ResidencyError) as info:
        await router.read_one(stale, sql, (own,))
    assert info.value.stale
    asked: list[TenantContext] = []

    async def on_stale(ctx: TenantContext) -> TenantContext | None:
        asked.append(ctx)
        return context_of(pair.a)

    row = await router.read_one(stale, sql, (own,), on_stale=on_stale)
    assert row is not None
    assert row["id"] == own
    assert asked == [stale]
