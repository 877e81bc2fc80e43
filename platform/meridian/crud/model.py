"""Columns every CRM record has."""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict
from uuid import UUID

from sqlalchemy import DateTime, Index, Integer, func, text
from sqlalchemy.orm import Mapped, mapped_column

from tenancy.planes import TenantScoped


class Record(TenantScoped):
    """``(tenant_id, id)`` primary key, timestamps and an optimistic-lock version."""

    id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-10)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), sort_order=90
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), sort_order=91
    )
    # Bumped on every update; the ETag is derived from it.
    version: Mapped[int] = mapped_column(Integer, server_default="1", sort_order=92)


def external_id_index(table: str) -> Index:
    """The unique index of a record kind's ``external_id`` (shard revision 0016): one
    record per external id in a tenant, records without one left out."""
    return Index(
        f"uq_{table}_external_id",
        "tenant_id",
        "external_id",
        unique=True,
        postgresql_where=text("external_id IS NOT NULL"),
    )


class RecordRow(TypedDict):
    """What a ``Record``'s row carries besides its own columns (the tenant is implied
    by the token and never read back). Each table's row type extends it."""

    id: UUID
    created_at: datetime
    updated_at: datetime
    version: int


def one_of(column: str, values: tuple[str, ...]) -> str:
    """A CHECK constraint's text: ``column`` holds one of ``values``."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"
