"""A shard's database engine (plain PostgreSQL or Citus) and everything that depends on it.

Every engine-specific choice is made here, from the engine recorded in the topology (or
detected on the database): callers ask ``traits(engine)`` and never test the engine
themselves.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Imported where used: settings and the CLI name engines without loading the driver.
    import asyncpg

# Whether the database runs Citus: its extension is installed there.
DETECT_SQL = "SELECT extname FROM pg_extension WHERE extname = 'citus'"


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
            # The server's default (auto): under forced generic plans Citus cannot make
            # a distributed plan for parameterised scoped reads; custom plans route them
            # to one worker.
            read_pool_settings=MappingProxyType({}),
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


async def detect_engine(conn: asyncpg.Connection) -> ShardEngine:
    """The engine the database behind ``conn`` runs (one catalog query)."""
    found = await conn.fetchval(DETECT_SQL)
    return ShardEngine.CITUS if found is not None else ShardEngine.POSTGRES


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
