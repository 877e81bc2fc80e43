"""Tables behind access control.

Control plane: Casbin policy rules (role templates with domain ``*`` and per-tenant
overrides), the roles a tenant defined or overrode, and each tenant's policy version.
Shard: the reporting-line closure and record shares, which the record-scope
predicate joins in SQL.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from tenancy.planes import ControlBase, ShardBase, TenantScoped

# The kinds a record share may name (their tables).
RECORD_KINDS = ("account", "contact", "opportunity", "lead", "case")


class CasbinRule(ControlBase):
    """One Casbin rule: ``p, role, domain, object, action`` or ``g, role, parent, domain``."""

    __tablename__ = "casbin_rule"
    __table_args__ = (
        Index("ix_casbin_rule_p_domain", "ptype", "v1"),
        Index("ix_casbin_rule_g_domain", "ptype", "v2"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    ptype: Mapped[str] = mapped_column(String(8))
    v0: Mapped[str | None] = mapped_column(String(255))
    v1: Mapped[str | None] = mapped_column(String(255))
    v2: Mapped[str | None] = mapped_column(String(255))
    v3: Mapped[str | None] = mapped_column(String(255))
    v4: Mapped[str | None] = mapped_column(String(255))
    v5: Mapped[str | None] = mapped_column(String(255))


class TenantRole(ControlBase):
    """A role a tenant defined (``custom``) or a template it overrode (``override``).

    Its permissions are ``p`` rules in the tenant's domain and its parent a ``g`` rule;
    this row says the role exists (a custom role may have no rule at all) and, for an
    override, that the template's rules give way to the tenant's.
    """

    __tablename__ = "tenant_role"
    __table_args__ = (
        CheckConstraint("kind IN ('custom', 'override')", name="kind"),
        # A retried POST /v1/roles (same Idempotency-Key) finds the role it created.
        UniqueConstraint("tenant_id", "creation_key", name="uq_tenant_role_creation_key"),
    )

    tenant_id: Mapped[UUID] = mapped_column(
        ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(Text)
    creation_key: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PolicyVersion(ControlBase):
    """A tenant's policy version: bumped in every transaction that changes its rules or
    roles, announced to every API instance, and part of every memoised decision."""

    __tablename__ = "policy_version"

    tenant_id: Mapped[UUID] = mapped_column(
        ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(BigInteger, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class UserClosure(TenantScoped, ShardBase):
    """Every (manager, report) pair of the reporting line, at any depth, and each user
    with itself at depth 0; maintained in the transaction that changes a manager."""

    __tablename__ = "user_closure"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "ancestor_id"],
            ["app_user.tenant_id", "app_user.id"],
            name="fk_user_closure_ancestor",
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "descendant_id"],
            ["app_user.tenant_id", "app_user.id"],
            name="fk_user_closure_descendant",
            ondelete="CASCADE",
        ),
        Index("ix_user_closure_descendant", "tenant_id", "descendant_id", "ancestor_id"),
    )

    ancestor_id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-10)
    descendant_id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-9)
    depth: Mapped[int] = mapped_column(Integer)


class RecordShare(TenantScoped, ShardBase):
    """A record shared with one user, or with a team: a manager and everyone below."""

    __tablename__ = "record_share"
    __table_args__ = (
        CheckConstraint(
            "record_kind IN ('account', 'contact', 'opportunity', 'lead', 'case')",
            name="record_kind",
        ),
        CheckConstraint("(user_id IS NULL) <> (team_id IS NULL)", name="one_grantee"),
        ForeignKeyConstraint(
            ["tenant_id", "user_id"],
            ["app_user.tenant_id", "app_user.id"],
            name="fk_record_share_user",
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "team_id"],
            ["app_user.tenant_id", "app_user.id"],
            name="fk_record_share_team",
            ondelete="CASCADE",
        ),
        Index("ix_record_share_record", "tenant_id", "record_id"),
        # The record scope looks shares up by grantee (shard_0004).
        Index(
            "ix_record_share_user",
            "tenant_id",
            "user_id",
            "record_kind",
            "record_id",
            postgresql_where=text("user_id IS NOT NULL"),
        ),
        Index(
            "ix_record_share_team",
            "tenant_id",
            "team_id",
            "record_kind",
            "record_id",
            postgresql_where=text("team_id IS NOT NULL"),
        ),
        Index(
            "uq_record_share_user",
            "tenant_id",
            "record_id",
            "user_id",
            unique=True,
            postgresql_where=text("user_id IS NOT NULL"),
        ),
        Index(
            "uq_record_share_team",
            "tenant_id",
            "record_id",
            "team_id",
            unique=True,
            postgresql_where=text("team_id IS NOT NULL"),
        ),
    )

    id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-10)
    record_kind: Mapped[str] = mapped_column(String(16))
    record_id: Mapped[UUID]
    user_id: Mapped[UUID | None]
    team_id: Mapped[UUID | None]
    created_by: Mapped[UUID | None]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ShareRow(TypedDict):
    """A share as its repository reads it."""

    id: UUID
    record_kind: str
    record_id: UUID
    user_id: UUID | None
    team_id: UUID | None
    created_by: UUID | None
    created_at: datetime
