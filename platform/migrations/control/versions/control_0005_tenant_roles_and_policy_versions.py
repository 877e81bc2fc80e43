"""tenant roles and policy versions

Custom roles and template overrides of each tenant (their permissions are casbin_rule
rows in the tenant's domain) and the per-tenant policy version that every change bumps.

Revision ID: control_0005
Revises: control_0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "control_0005"
down_revision = "control_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenant_role",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("creation_key", sa.String(length=255), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("kind IN ('custom', 'override')", name=op.f("ck_tenant_role_kind")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name=op.f("fk_tenant_role_tenant_id_tenant"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "name", name=op.f("pk_tenant_role")),
        sa.UniqueConstraint("tenant_id", "creation_key", name="uq_tenant_role_creation_key"),
    )
    op.create_table(
        "policy_version",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name=op.f("fk_policy_version_tenant_id_tenant"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_policy_version")),
    )
    role = op.get_context().config.attributes["app_role"]
    app = '"' + role.replace('"', '""') + '"'
    for table in ("tenant_role", "policy_version"):
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {app}")


def downgrade() -> None:
    op.drop_table("policy_version")
    op.drop_table("tenant_role")
