from __future__ import annotations

from uuid import UUID

from sqlalchemy import ForeignKeyConstraint, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from meridian.crud.model import Record
from tenancy.planes import ShardBase


class Contact(Record, ShardBase):
    __tablename__ = "contact"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "account_id"],
            ["account.tenant_id", "account.id"],
            name="fk_contact_account",
        ),
        Index("ix_contact_last_name", "tenant_id", "last_name", "id"),
        Index("ix_contact_email", "tenant_id", "email"),
        Index("ix_contact_account", "tenant_id", "account_id", "id"),
        Index("ix_contact_owner", "tenant_id", "owner_id", "id"),
        Index("ix_contact_created", "tenant_id", "created_at", "id"),
        Index("ix_contact_updated", "tenant_id", "updated_at", "id"),
    )

    first_name: Mapped[str] = mapped_column(String(100), server_default="")
    last_name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(40))
    title: Mapped[str | None] = mapped_column(String(200))
    account_id: Mapped[UUID | None]
    owner_id: Mapped[UUID | None]
