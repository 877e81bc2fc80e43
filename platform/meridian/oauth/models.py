"""Control-plane tables of the authorization server: clients and signing keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, String, Text, UniqueConstraint, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tenancy.planes import ControlBase


class OAuthClient(ControlBase):
    """A confidential client. Tenant clients have ``tenant_id``; platform-admin clients not."""

    __tablename__ = "oauth_client"
    __table_args__ = (
        # A retried creation (same Idempotency-Key) finds the client instead of minting
        # a second one.
        UniqueConstraint("tenant_id", "creation_key", name="uq_oauth_client_creation_key"),
    )

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # SHA-256 of a 256-bit random secret: a slow password hash buys nothing for
    # high-entropy secrets and would put ~50 ms of CPU on every token request.
    secret_hash: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[UUID | None] = mapped_column(
        ForeignKey("tenant.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text)  # space-separated, the most it may ask for
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    creation_key: Mapped[str | None] = mapped_column(String(255))
    # The role the client acts with inside its tenant (the first client: admin).
    role: Mapped[str] = mapped_column(String(64), server_default="integration")


class SigningKey(ControlBase):
    """A JWT signing key. ``next`` keys are published before they sign; ``retired``
    keys stay published until the last token they signed has expired."""

    __tablename__ = "signing_key"
    __table_args__ = (CheckConstraint("state IN ('next', 'active', 'retired')", name="state"),)

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    private_jwk: Mapped[dict[str, Any]] = mapped_column(JSONB)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RefreshToken(ControlBase):
    """An opaque refresh token, stored as a SHA-256 digest. Rotated on every use; a
    token used twice revokes its whole family (every token descended from one login)."""

    __tablename__ = "refresh_token"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    family_id: Mapped[UUID] = mapped_column(index=True)
    tenant_id: Mapped[UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    user_id: Mapped[UUID] = mapped_column(index=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("oauth_client.client_id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TokenRevocation(ControlBase):
    """Emergency revocation: tokens of a user (``subject`` = user id) or of a whole
    tenant (``subject`` = ``*``) issued before ``not_before`` are refused."""

    __tablename__ = "token_revocation"

    tenant_id: Mapped[UUID] = mapped_column(
        ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True
    )
    subject: Mapped[str] = mapped_column(String(64), primary_key=True)
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
