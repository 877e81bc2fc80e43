"""A shard's database engine (plain PostgreSQL or Citus) and everything that depends on it.

Every engine-specific choice is made here, from the engine recorded in the topology (or
detected on the database): callers ask ``traits(engine)`` and never test the engine
themselves.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Imported where used: settings and the CLI name engines without loading the driver.
    import asyncpg

# Whether the database runs Citus: its extension is installed there.
DETECT_SQL = "SELECT extname FROM pg_extension WHERE extname = 'citus'"
# The column every tenant table is distributed (and colocated) on.
TENANT_COLUMN = "tenant_id"
# The table every other tenant table is colocated with: the residency row that each
# transaction reads on entering a tenant then lives in the same shard group as the
# tenant's rows, so a tenant's transaction stays on one worker.
COLOCATION_ANCHOR = "tenant_residency"
_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class ShardEngine(enum.StrEnum):
    POSTGRES = "postgres"
    CITUS = "citus"


class ReadStrategy(enum.Enum):
    """How a read of one row runs on a shard."""

    # meridian_read_as joined laterally: enter the tenant and read in ONE statement.
    ONE_STATEMENT = "one-statement"
    # BEGIN READ ONLY + meridian_enter_tenant, the query, COMMIT (``reader``).
    TRANSACTION = "transaction"


@dataclass(frozen=True, slots=True)
class EngineTraits:
    engine: ShardEngine
    # How one-row reads by id run (the deployment can still turn one-statement reads
    # off everywhere: ShardRouter.read_strategy).
    by_id_reads: ReadStrategy
    # Server settings of the raw read pools' connections, on top of the common ones.
    read_pool_settings: Mapping[str, str] = field(default_factory=dict)
    # Shard migrations: statements the migration transaction starts with, before any
    # revision runs (``SET LOCAL``, so they end with it).
    migration_preamble: tuple[str, ...] = ()
    # Database-level settings every session on the shard must have (``ALTER DATABASE``:
    # its owner may set them, where ``ALTER ROLE`` would need CREATEROLE).
    database_settings: Mapping[str, str] = field(default_factory=dict)
    # Whether tenant tables are distributed on TENANT_COLUMN (and lookup tables
    # replicated to every node) when a revision creates them.
    distributes_tables: bool = False

    def table_layout(
        self, tenant_tables: Sequence[str], reference_tables: Sequence[str] = ()
    ) -> list[str]:
        """The statements that lay out tables a revision just created (empty ones: a
        table with rows under forced RLS cannot be distributed by its owner). Nothing
        on an engine that does not distribute; on Citus the anchor first, in its own
        colocation group, then every other tenant table colocated with it. Already
        distributed tables are left alone, so a layout can be re-run."""
        if not self.distributes_tables:
            return []
        for name in (*tenant_tables, *reference_tables):
            if not _TABLE_NAME.match(name):
                raise ValueError(f"not a plain table name: {name!r}")
        ordered = sorted(tenant_tables, key=lambda t: t != COLOCATION_ANCHOR)
        statements = [
            _unless_distributed(
                t,
                f"create_distributed_table('{t}', '{TENANT_COLUMN}', colocate_with => "
                f"'{'none' if t == COLOCATION_ANCHOR else COLOCATION_ANCHOR}')",
            )
            for t in ordered
        ]
        statements += [
            _unless_distributed(t, f"create_reference_table('{t}')") for t in reference_tables
        ]
        return statements

    def database_settings_sql(self) -> list[str]:
        """``ALTER DATABASE`` statements for ``database_settings`` on the connection's
        database (re-running them changes nothing)."""
        return [
            "DO $do$ BEGIN EXECUTE format('ALTER DATABASE %I SET "
            f"{name} = %L', current_database(), '{value}'); END $do$"
            for name, value in self.database_settings.items()
        ]


def _unless_distributed(table: str, call: str) -> str:
    return (
        f"SELECT {call} WHERE NOT EXISTS "  # noqa: S608 - names checked by the caller
        f"(SELECT 1 FROM pg_dist_partition WHERE logicalrelid = '{table}'::regclass)"
    )


_TRAITS: Mapping[ShardEngine, EngineTraits] = MappingProxyType(
    {
        ShardEngine.POSTGRES: EngineTraits(
            ShardEngine.POSTGRES,
            by_id_reads=ReadStrategy.ONE_STATEMENT,
            # Reads are prepared once per connection and run with the same shape every
            # time; planning each run (a custom plan) costs more than the run for
            # scoped lists.
            read_pool_settings=MappingProxyType({"plan_cache_mode": "force_generic_plan"}),
        ),
        ShardEngine.CITUS: EngineTraits(
            ShardEngine.CITUS,
            # Citus does not plan a function scan joined laterally to a distributed table
            # (no parameters in SQL functions under a generic plan; a fan-out to every
            # shard under a custom one).
            by_id_reads=ReadStrategy.TRANSACTION,
            # The database's plan_cache_mode (below): under forced generic plans Citus
            # cannot make a distributed plan for parameterised scoped reads; custom
            # plans route them to one worker.
            read_pool_settings=MappingProxyType({}),
            # DDL on distributed tables and the DML or function calls after it share one
            # migration transaction: over parallel connections Citus refuses that
            # ("cannot run function command because there was a parallel operation on
            # a distributed table in the transaction").
            migration_preamble=("SET LOCAL citus.multi_shard_modify_mode = 'sequential'",),
            # SET LOCAL app.tenant_id (in meridian_enter_tenant) reaches the workers only
            # with this; without it every tenant query sees no rows there.
            # Custom plans for every session (ORM engines and read pools alike): from
            # the sixth run of a prepared statement `auto` may take the generic plan,
            # and a generic plan of a statement naming tenant_id twice (the ORM's
            # tenant criterion beside the query's own) is pruned to no single shard:
            # it runs on every shard of the table.
            database_settings=MappingProxyType(
                {"citus.propagate_set_commands": "local", "plan_cache_mode": "force_custom_plan"}
            ),
            distributes_tables=True,
        ),
    }
)


def traits(engine: ShardEngine | str) -> EngineTraits:
    """What the shard's engine decides; raises ValueError for an unknown engine."""
    return _TRAITS[ShardEngine(engine)]


class EngineMismatchError(Exception):
    """The engine a shard is declared with is not the one its database runs."""

    def __init__(self, shard_id: str, declared: ShardEngine, detected: ShardEngine) -> None:
        super().__init__(
            f"shard {shard_id} is declared as engine {declared.value}, "
            f"but its database runs {detected.value}"
        )
        self.shard_id = shard_id
        self.declared = declared
        self.detected = detected


def engine_from(detected: object) -> ShardEngine:
    """The engine DETECT_SQL's answer (its one value, or None for no row) names."""
    return ShardEngine.CITUS if detected is not None else ShardEngine.POSTGRES


async def detect_engine(conn: asyncpg.Connection) -> ShardEngine:
    """The engine the database behind ``conn`` runs (one catalog query)."""
    return engine_from(await conn.fetchval(DETECT_SQL))


async def detect_engine_at(dsn: str) -> ShardEngine:
    """The engine of the database ``dsn`` names (a SQLAlchemy or libpq URL)."""
    import asyncpg

    conn = await asyncpg.connect(asyncpg_dsn(dsn), timeout=10.0)
    try:
        return await detect_engine(conn)
    finally:
        await conn.close()


def agreed_engine(
    shard_id: str, declared: ShardEngine | str | None, detected: ShardEngine
) -> ShardEngine:
    """The engine to record: the detected one, when the declared one (if any) agrees."""
    if declared is not None and ShardEngine(declared) is not detected:
        raise EngineMismatchError(shard_id, ShardEngine(declared), detected)
    return detected


def asyncpg_dsn(dsn: str) -> str:
    return dsn.replace("postgresql+asyncpg://", "postgresql://", 1)
