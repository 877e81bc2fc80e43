"""Users of a tenant, on the tenant's shard (they are tenant data, like its records)."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import Boolean, ForeignKeyConstraint, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from meridian.crud.model import Record, RecordRow
from tenancy.planes import ShardBase


class AppUser(Record, ShardBase):
    __tablename__ = "app_user"
    __table_args__ = (
        UniqueConstraint("tenant_id", "email", name="uq_app_user_email"),
        ForeignKeyConstraint(
            ["tenant_id", "manager_id"],
            ["app_user.tenant_id", "app_user.id"],
            name="fk_app_user_manager",
        ),
        Index("ix_app_user_manager", "tenant_id", "manager_id"),
        Index("ix_app_user_name", "tenant_id", "name", "id"),
        Index("ix_app_user_created", "tenant_id", "created_at", "id"),
    )

    email: Mapped[str] = mapped_column(String(320))  # stored trimmed and lower-cased
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(64))
    manager_id: Mapped[UUID | None]
    active: Mapped[bool] = mapped_column(Boolean, server_default="true")
    # argon2id; None for users who cannot log in with a password (invited, SSO later).
    password_hash: Mapped[str | None] = mapped_column(Text)


class UserRow(RecordRow):
    """A user as the API shows one (never the password hash)."""

    email: str
    name: str
    role: str
    manager_id: UUID | None
    active: bool
