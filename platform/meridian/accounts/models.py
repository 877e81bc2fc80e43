from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import CheckConstraint, ForeignKeyConstraint, Index, Integer, LargeBinary, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from meridian.crud.model import Record, RecordRow, external_id_index
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
        Index("ix_account_tax_id_bidx", "tenant_id", "tax_id_bidx"),
        Index("ix_account_enc_version", "tenant_id", "enc_version", "id"),
        CheckConstraint("enc_version IS NOT NULL OR tax_id_enc IS NULL", name="enc_version"),
        external_id_index("account"),
    )

    name: Mapped[str] = mapped_column(String(255))
    domain: Mapped[str | None] = mapped_column(String(255))
    parent_id: Mapped[UUID | None]
    owner_id: Mapped[UUID | None]
    # Encrypted tax id (see meridian.encryption.fields) and its key version.
    tax_id_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    tax_id_bidx: Mapped[bytes | None] = mapped_column(LargeBinary)
    enc_version: Mapped[int | None] = mapped_column(Integer)
    # The account's id in the client's own system (batch upserts find it by that).
    external_id: Mapped[str | None] = mapped_column(String(255))
    # The tenant's own fields (meridian.crud.custom), by name.
    custom: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")


class AccountRow(RecordRow):
    """An account as its repository reads it (the tax id still sealed)."""

    name: str
    domain: str | None
    parent_id: UUID | None
    owner_id: UUID | None
    tax_id_enc: bytes | None
    external_id: str | None
    custom: dict[str, Any]
