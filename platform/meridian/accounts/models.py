from __future__ import annotations

from uuid import UUID

from sqlalchemy import ForeignKeyConstraint, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from meridian.crud.model import Record
from tenancy.planes import ShardBase


class Account(Record, ShardBase):
    __tablename__ = "account"
    __table_args__ = (
        # Composite keys include tenant_id: Citus colocation, and an id of another
        # tenant can never satisfy the reference.
        ForeignKeyConstraint(
            ["tenant_id", "parent_id"],
            ["account.tenant_id", "account.id"],
            name="fk_account_parent",
        ),
        Index("ix_account_name", "tenant_id", "name", "id"),
        Index("ix_account_domain", "tenant_id", "domain"),
        Index("ix_account_parent", "tenant_id", "parent_id"),
        Index("ix_account_owner", "tenant_id", "owner_id", "id"),
        Index("ix_account_created", "tenant_id", "created_at", "id"),
        Index("ix_account_updated", "tenant_id", "updated_at", "id"),
    )

    name: Mapped[str] = mapped_column(String(255))
    domain: Mapped[str | None] = mapped_column(String(255))
    parent_id: Mapped[UUID | None]
    owner_id: Mapped[UUID | None]
