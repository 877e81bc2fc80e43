"""The two metadata planes: every table belongs to exactly one of them.

Control-plane tables are global and small (tenants, topology, directory, clients);
shard tables hold CRM rows only and are keyed ``(tenant_id, id)`` so that Citus can
distribute them by ``tenant_id``.
"""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Explicit names keep Alembic diffs stable and let errors be mapped by constraint name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class ControlBase(DeclarativeBase):
    """Base for tables of the control-plane database."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ShardBase(DeclarativeBase):
    """Base for tables that live on every shard database."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TenantScoped:
    """Mixin for shard tables: every row carries an immutable ``tenant_id``.

    It is the leading primary-key column, so the ORM tenant filter and Citus both key on it.
    """

    tenant_id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-20)
