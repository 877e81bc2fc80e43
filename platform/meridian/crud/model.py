"""Columns every CRM record has."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from sqlalchemy import DateTime, Integer, func
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
