"""Runs a tenant's transaction on the shard that holds it.

Every transaction enters the tenant through one function on the shard,
``meridian_enter_tenant(tenant, epoch, write)``, which checks the residency row (the
fence against stale directory entries) and runs ``SET LOCAL app.tenant_id`` for RLS.
On top of RLS, every ORM statement of a shard session gets a ``tenant_id`` criterion
added, so ORM bulk UPDATE/DELETE are scoped even when written carelessly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any, NoReturn, TypeVar
from uuid import UUID

import asyncpg
from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria

from sharding.bulkhead import TenantBulkhead
from sharding.engine import ReadStrategy
from sharding.engines import ShardEngines
from sharding.errors import ResidencyError, ShardUnavailableError
from tenancy.context import TenantContext
from tenancy.planes import TenantScoped

ENTER_TENANT = text("SELECT meridian_enter_tenant(:tenant_id, :epoch, :write)")
ADMIT_TENANT = text("SELECT meridian_admit_tenant(:tenant_id, :epoch)")
RESIDENCY_SQLSTATES = frozenset({"MR001", "MR002", "MR003"})
T = TypeVar("T")
# Tries of a first use of a pooled connection while they turn out dead: more than a
# shard engine's pool holds (pool_size + max_overflow, 20 by default).
_LOST_CONNECTION_TRIES = 32
logger = logging.getLogger(__name__)
# Connection-level failures: the server is gone, refusing, or shutting down.
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "08000", "08003", "08006"})


class ShardSession(Session):
    """Sync session class of shard sessions; carries the tenant in ``info``."""


@event.listens_for(ShardSession, "do_orm_execute")
def _scope_to_tenant(state: ORMExecuteState) -> None:
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.is_column_load or state.is_relationship_load:
        return
    tenant_id: UUID | None = state.session.info.get("tenant_id")
    if tenant_id is None:
        # Fail closed: a shard session without a tenant must never run a query.
        raise RuntimeError("shard session used without a tenant")
    state.statement = state.statement.options(
        with_loader_criteria(
            TenantScoped,
            lambda cls: cls.tenant_id == tenant_id,
            include_aliases=True,
        )
    )


def is_unavailable(exc: BaseException) -> bool:
    """Whether an exception means the shard cannot be reached (vs. a query error)."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate in _UNAVAILABLE_SQLSTATES:
            return True
        exc = exc.orig.__cause__ or exc.orig if exc.orig is not None else exc
    return isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.CannotConnectNowError
        | asyncpg.AdminShutdownError
        | asyncpg.ConnectionDoesNotExistError,
    )


def is_lost_connection(exc: BaseException) -> bool:
    """Whether a pooled connection died under us (its backend was ended: a server
    restart, an administrator, an idle timeout): a new connection may well work, so
    this alone says nothing about the shard."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig.__cause__ or exc.orig if exc.orig is not None else exc
    return isinstance(
        exc,
        asyncpg.ConnectionDoesNotExistError
        | asyncpg.AdminShutdownError
        | asyncpg.InterfaceError
        | asyncpg.InternalClientError
        | ConnectionResetError
        | BrokenPipeError,
    )


OnStale = Callable[[TenantContext], Awaitable[TenantContext | None]]


async def _rerouted(
    tenant: TenantContext, err: ResidencyError, on_stale: OnStale | None
) -> TenantContext:
    """The fresh context to retry on once after the shard refused ``tenant``; re-raises
    ``err`` when the refusal is not about a stale entry or nothing changed."""
    if not err.stale or on_stale is None:
        raise err
    fresh = await on_stale(tenant)
    if fresh is None or (fresh.shard_id, fresh.epoch) == (tenant.shard_id, tenant.epoch):
        raise err
    return fresh


class ShardRouter:
    def __init__(
        self,
        engines: ShardEngines,
        *,
        one_statement_reads: bool = True,
        write_hold: float = 2.0,
        session_info: Mapping[str, Any] | None = None,
        bulkhead: TenantBulkhead | None = None,
    ) -> None:
        self.engines = engines
        # How many of a shard's connections one tenant may hold at once (None: any).
        self.bulkhead = bulkhead
        # What every session carries for the code that runs in it (``Session.info``):
        # the deployment's services that repositories need and are not given per call.
        self.session_info = dict(session_info or {})
        self.one_statement_reads = one_statement_reads
        # How long a write waits while its tenant is fenced by a move (see _entered).
        self.write_hold = write_hold

    def read_strategy(self, shard_id: str) -> ReadStrategy:
        """How one-row reads run on ``shard_id``: the one place this is chosen.

        The one-statement form is one round trip instead of three, but a shard whose
        planner cannot route a function scan joined laterally to a distributed table
        (Citus) must read in a transaction: the shard's engine decides
        (``sharding.engine.traits``), and the deployment can turn one-statement reads
        off everywhere (``one_statement_reads``).
        """
        if not self.one_statement_reads:
            return ReadStrategy.TRANSACTION
        return self.engines.traits(shard_id).by_id_reads

    def session(self, tenant: TenantContext) -> AsyncSession:
        """A new, not yet begun session on the tenant's shard (prefer ``transaction``)."""
        return AsyncSession(
            self.engines.engine(tenant.shard_id),
            sync_session_class=ShardSession,
            info={**self.session_info, "tenant_id": tenant.tenant_id},
            expire_on_commit=False,
            autoflush=False,
        )

    async def _on_shard(
        self,
        shard_id: str,
        attempt: Callable[[], Awaitable[T]],
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """``attempt`` (the first use of a pooled connection: a transaction's begin, a
        one-statement read), again on another connection while the ones it gets had
        died.

        Without this, every connection a restarted server left in the pools failed one
        request and opened the shard's breaker (one failure opens it): a 503 for all its
        tenants while the server was up. ``refresh`` drops the pool's other connections
        from before (asyncpg's read pools). An engine's pool drops them itself on the
        errors SQLAlchemy takes for a disconnect, which a crashed server's are not
        always; ``_begin`` then discards the dead one and the next try takes the next,
        up to more than a pool holds. Any other failure (a refused connection: the
        server is down) is the shard's state and is reported as before.
        """
        for tries in range(1, _LOST_CONNECTION_TRIES + 1):
            try:
                return await attempt()
            except BaseException as exc:
                if not is_lost_connection(exc) or tries == _LOST_CONNECTION_TRIES:
                    self._reraise(shard_id, exc)
                if tries == 1:
                    logger.warning(
                        "shard %s: a pooled connection had died (%r); reconnecting",
                        shard_id,
                        exc,
                    )
            if refresh is not None and tries == 1:
                try:
                    await refresh()
                except BaseException as exc:
                    self._reraise(shard_id, exc)
        raise AssertionError("unreachable")  # the last try returns or raises

    async def _begin(
        self, tenant: TenantContext, write: bool, *, admit: bool = False
    ) -> AsyncSession:
        async def attempt() -> AsyncSession:
            session = self.session(tenant)
            try:
                await session.begin()
                if admit:
                    await session.execute(
                        ADMIT_TENANT, {"tenant_id": tenant.tenant_id, "epoch": tenant.epoch}
                    )
                await session.execute(
                    ENTER_TENANT,
                    {"tenant_id": tenant.tenant_id, "epoch": tenant.epoch, "write": write},
                )
            except BaseException as exc:
                if is_lost_connection(exc):
                    # Out of the pool, not back into it: SQLAlchemy discards a connection
                    # by itself only on the errors it takes for a disconnect, which a
                    # crashed server's are not always, and the retry would meet it again.
                    await session.invalidate()
                else:
                    await session.close()
                raise
            return session

        return await self._on_shard(tenant.shard_id, attempt)

    @asynccontextmanager
    async def transaction(
        self,
        tenant: TenantContext,
        *,
        write: bool,
        on_stale: OnStale | None = None,
        admit: bool = False,
    ) -> AsyncIterator[AsyncSession]:
        """A transaction inside the tenant; commits on success, rolls back on error.

        When the shard says the directory entry is stale, ``on_stale`` is asked for a
        fresh context and the transaction is retried once on it. ``admit`` first writes
        the tenant's residency row (onboarding; a no-op if it exists).
        """
        async with (
            self._slot(tenant),
            self._transaction(tenant, write, on_stale, admit) as session,
        ):
            yield session

    def _slot(self, tenant: TenantContext) -> AbstractAsyncContextManager[None]:
        """One of the tenant's connection slots (``sharding.bulkhead``), or none needed."""
        if self.bulkhead is None:
            return nullcontext()
        return self.bulkhead.hold(tenant.tenant_id)

    @asynccontextmanager
    async def _transaction(
        self, tenant: TenantContext, write: bool, on_stale: OnStale | None, admit: bool
    ) -> AsyncIterator[AsyncSession]:
        try:
            session = await self._begin(tenant, write, admit=admit)
        except ResidencyError as err:
            tenant, session = await self._entered(tenant, write, err, on_stale)
        try:
            yield session
            await session.commit()
        except BaseException as exc:
            await session.rollback()
            self._reraise(tenant.shard_id, exc)
        finally:
            await session.close()
        self.engines.mark_up(tenant.shard_id)

    async def _entered(
        self,
        tenant: TenantContext,
        write: bool,
        err: ResidencyError,
        on_stale: OnStale | None,
    ) -> tuple[TenantContext, AsyncSession]:
        """After the shard refused to enter ``tenant``: the transaction begun on the
        fresh context (a stale entry), or, for a write to a tenant a move has fenced,
        begun once the fence lifts, held for up to ``write_hold`` seconds.

        The hold is the write buffering of a move's switch (Vitess's idea): the fence
        lasts well under a second, so a write that waits it out is slower, not refused.
        The source answers MR002 until the switch retires its residency, then MR001
        (stale), which re-routes the write to the target; a move rolled back unfences
        the source and the write goes through there. Only a fence longer than the hold
        reaches the client, as 503 with Retry-After. Each retry is one round trip on the
        tenant's shard; nothing else waits on it.
        """
        deadline = time.monotonic() + self.write_hold
        delay = 0.01
        reroutes = 0
        while True:
            if write and err.read_only:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise err
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 0.1)
            elif reroutes == 0:
                # A re-route is asked for once (a held write that sees the switch needs
                # one too: MR002 while held, then MR001); a fresh entry that is stale
                # again is not chased.
                tenant = await _rerouted(tenant, err, on_stale)
                reroutes += 1
            else:
                raise err
            try:
                return tenant, await self._begin(tenant, write)
            except ResidencyError as again:
                err = again

    @asynccontextmanager
    async def reader(
        self, tenant: TenantContext, *, on_stale: OnStale | None = None
    ) -> AsyncIterator[asyncpg.Connection]:
        """A read transaction inside the tenant on a raw asyncpg connection.

        The hot read path: no ORM session and one round trip to begin and enter the
        tenant (a simple-protocol batch), one per query, one to commit. Queries run here
        must name ``tenant_id`` themselves, as every repository query does.
        """
        async with self._slot(tenant):
            try:
                conn, pool = await self._begin_read(tenant)
            except ResidencyError as err:
                tenant = await _rerouted(tenant, err, on_stale)
                conn, pool = await self._begin_read(tenant)
            try:
                yield conn
                await conn.execute("COMMIT")
            except BaseException as exc:
                self._reraise(tenant.shard_id, exc)
            finally:
                # The pool's reset rolls back anything left open: no SET LOCAL survives.
                await pool.release(conn)
        self.engines.mark_up(tenant.shard_id)

    async def read_row(
        self,
        tenant: TenantContext,
        sql: Callable[[], str],
        args: Sequence[Any],
        in_transaction: Callable[[asyncpg.Connection], Awaitable[Any]],
        *,
        strategy: ReadStrategy | None = None,
        on_stale: OnStale | None = None,
    ) -> Any:
        """One row, read the way ``strategy`` says (default: the shard's,
        :meth:`read_strategy`): ``sql()`` in one statement (:meth:`read_one`), or
        ``in_transaction(conn)`` in a read transaction (:meth:`reader`). The row, or
        None."""
        if (strategy or self.read_strategy(tenant.shard_id)) is ReadStrategy.ONE_STATEMENT:
            return await self.read_one(tenant, sql(), args, on_stale=on_stale)
        async with self.reader(tenant, on_stale=on_stale) as conn:
            return await in_transaction(conn)

    async def read_one(
        self,
        tenant: TenantContext,
        inner_sql: str,
        args: Sequence[Any],
        *,
        on_stale: OnStale | None = None,
    ) -> asyncpg.Record | None:
        """One row in ONE round trip: enter the tenant and read in a single statement.

        ``inner_sql`` takes its own arguments as ``$1..$n`` and names the tenant as
        ``e.tid``; it runs laterally after ``meridian_read_as`` (see the shard migration
        that defines it) inside the statement's implicit transaction, so the tenant's
        SET LOCAL lasts exactly as long as the read. Used for hot by-id reads; lists and
        scoped reads use :meth:`reader`.
        """
        n = len(args)
        # inner_sql is compiled from a SQLAlchemy statement, never from client input.
        sql = (
            f"SELECT s.* FROM meridian_read_as(${n + 1}::uuid, ${n + 2}::integer) AS e(tid) "  # noqa: S608
            f"CROSS JOIN LATERAL ({inner_sql}) AS s"
        )
        async with self._slot(tenant):
            try:
                return await self._read_one(tenant, sql, args)
            except ResidencyError as err:
                return await self._read_one(await _rerouted(tenant, err, on_stale), sql, args)

    async def _read_one(
        self, tenant: TenantContext, sql: str, args: Sequence[Any]
    ) -> asyncpg.Record | None:
        pool = await self.engines.read_pool(tenant.shard_id)

        async def attempt() -> asyncpg.Record | None:
            found: asyncpg.Record | None = await pool.fetchrow(
                sql, *args, tenant.tenant_id, tenant.epoch
            )
            return found

        row = await self._on_shard(tenant.shard_id, attempt, pool.expire_connections)
        self.engines.mark_up(tenant.shard_id)
        return row

    async def _begin_read(self, tenant: TenantContext) -> tuple[asyncpg.Connection, asyncpg.Pool]:
        pool = await self.engines.read_pool(tenant.shard_id)
        # Literals, not parameters: the simple protocol sends BEGIN and the enter call
        # in one round trip. Both values are typed (UUID, int), never text from a
        # client, so formatting them is safe.
        begin = (
            f"BEGIN READ ONLY; SELECT meridian_enter_tenant("
            f"'{UUID(str(tenant.tenant_id))}'::uuid, {int(tenant.epoch)}, false)"
        )

        async def attempt() -> asyncpg.Connection:
            conn = await pool.acquire()
            try:
                await conn.execute(begin)
            except BaseException:
                await pool.release(conn)
                raise
            return conn

        conn = await self._on_shard(tenant.shard_id, attempt, pool.expire_connections)
        return conn, pool

    def _reraise(self, shard_id: str, exc: BaseException) -> NoReturn:
        translated = self._translate(shard_id, exc)
        if translated is exc:
            raise exc
        raise translated from exc

    def _translate(self, shard_id: str, exc: BaseException) -> BaseException:
        if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate in RESIDENCY_SQLSTATES:
            return ResidencyError(exc.sqlstate, str(exc))
        if isinstance(exc, sa_exc.DBAPIError):
            sqlstate = getattr(exc.orig, "sqlstate", None)
            if sqlstate in RESIDENCY_SQLSTATES:
                cause: Any = exc.orig
                return ResidencyError(sqlstate, str(getattr(cause, "args", [""])[0]))
        if isinstance(exc, sa_exc.TimeoutError):
            # Pool exhausted: the shard is overloaded, not down; do not trip the breaker.
            return ShardUnavailableError(shard_id, retry_after=1.0)
        if is_unavailable(exc):
            return self.engines.mark_down(shard_id)
        return exc
