from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import CheckConstraint, ForeignKeyConstraint, Index, Integer, LargeBinary, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from meridian.crud.model import Record, RecordRow, external_id_index
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
        # Equality search on encrypted fields goes through their blind indexes.
        Index("ix_contact_email_bidx", "tenant_id", "email_bidx"),
        Index("ix_contact_phone_bidx", "tenant_id", "phone_bidx"),
        Index("ix_contact_tax_id_bidx", "tenant_id", "tax_id_bidx"),
        # The re-encryption job walks rows still on an old key version, in id order.
        Index("ix_contact_enc_version", "tenant_id", "enc_version", "id"),
        CheckConstraint(
            "enc_version IS NOT NULL OR "
            "(email_enc IS NULL AND phone_enc IS NULL AND tax_id_enc IS NULL)",
            name="enc_version",
        ),
        Index("ix_contact_account", "tenant_id", "account_id", "id"),
        Index("ix_contact_owner", "tenant_id", "owner_id", "id"),
        Index("ix_contact_created", "tenant_id", "created_at", "id"),
        Index("ix_contact_updated", "tenant_id", "updated_at", "id"),
        external_id_index("contact"),
    )

    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    # Sensitive fields (meridian.encryption.fields.SENSITIVE): AES-256-GCM ciphertext
    # and a blind index each; enc_version is the data-key version of all of them.
    email_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    email_bidx: Mapped[bytes | None] = mapped_column(LargeBinary)
    phone_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    phone_bidx: Mapped[bytes | None] = mapped_column(LargeBinary)
    tax_id_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    tax_id_bidx: Mapped[bytes | None] = mapped_column(LargeBinary)
    enc_version: Mapped[int | None] = mapped_column(Integer)
    title: Mapped[str | None] = mapped_column(String(200))
    account_id: Mapped[UUID | None]
    owner_id: Mapped[UUID | None]
    # Its id in the client's own system (batch upserts find it by that).
    external_id: Mapped[str | None] = mapped_column(String(255))
    # The tenant's own fields (meridian.crud.custom), by name.
    custom: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")


class ContactRow(RecordRow):
    """A contact as its repository reads it (email, phone and tax id still sealed)."""

    first_name: str | None
    last_name: str
    email_enc: bytes | None
    phone_enc: bytes | None
    tax_id_enc: bytes | None
    title: str | None
    account_id: UUID | None
    owner_id: UUID | None
    external_id: str | None
    custom: dict[str, Any]
