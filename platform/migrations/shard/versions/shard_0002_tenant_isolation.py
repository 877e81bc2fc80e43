"""Tenant isolation on the shard: enter-tenant function, RLS, least-privilege grants.

Revision ID: shard_0002
Revises: shard_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "shard_0002"
down_revision = "shard_0001"
branch_labels = None
depends_on = None

# table -> columns the app role may UPDATE (None: no UPDATE at all). tenant_id and id are
# never updatable: column privileges make them immutable without a trigger, which Citus
# would not run on distributed tables anyway.
APP_TABLES: dict[str, tuple[str, ...] | None] = {
    "account": ("name", "domain", "parent_id", "owner_id", "updated_at", "version"),
    "contact": (
        "first_name",
        "last_name",
        "email",
        "phone",
        "title",
        "account_id",
        "owner_id",
        "updated_at",
        "version",
    ),
    "pipeline": ("name", "is_default", "updated_at", "version"),
    "pipeline_stage": ("name", "position", "probability", "kind", "updated_at", "version"),
    "opportunity": (
        "account_id",
        "name",
        "amount",
        "currency",
        "pipeline_id",
        "stage_id",
        "expected_close_date",
        "owner_id",
        "updated_at",
        "version",
    ),
    "activity": None,  # immutable interaction records
    "idempotency_key": (
        "request_hash",
        "status_code",
        "response_body",
        "response_headers",
        "created_at",
    ),
}
ALL_TABLES = [*APP_TABLES, "tenant_residency"]

POLICY = "tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid"

ENTER_TENANT = """
CREATE OR REPLACE FUNCTION meridian_enter_tenant(p_tenant uuid, p_epoch integer, p_write boolean)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
AS $fn$
DECLARE
    r_epoch integer;
    r_writable boolean;
BEGIN
    IF p_tenant IS NULL THEN
        RAISE EXCEPTION 'no tenant given' USING ERRCODE = 'MR003';
    END IF;
    -- SET LOCAL (not set_config): Citus propagates only SET LOCAL to its workers.
    -- It comes first because tenant_residency is under FORCE RLS like every table.
    EXECUTE format('SET LOCAL app.tenant_id = %L', p_tenant);
    IF p_write THEN
        -- Writers hold the row FOR SHARE, so a move's fence (FOR UPDATE) waits for them.
        SELECT epoch, writable INTO r_epoch, r_writable
          FROM public.tenant_residency WHERE tenant_id = p_tenant FOR SHARE;
    ELSE
        SELECT epoch, writable INTO r_epoch, r_writable
          FROM public.tenant_residency WHERE tenant_id = p_tenant;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % is not resident on this shard', p_tenant
              USING ERRCODE = 'MR003';
    END IF;
    IF r_epoch <> p_epoch THEN
        RAISE EXCEPTION 'stale directory entry for tenant %: epoch % here, % asked',
              p_tenant, r_epoch, p_epoch USING ERRCODE = 'MR001';
    END IF;
    IF p_write AND NOT r_writable THEN
        RAISE EXCEPTION 'tenant % is fenced for writes', p_tenant USING ERRCODE = 'MR002';
    END IF;
END
$fn$
"""

ADMIT_TENANT = """
CREATE OR REPLACE FUNCTION meridian_admit_tenant(p_tenant uuid, p_epoch integer)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
AS $fn$
BEGIN
    EXECUTE format('SET LOCAL app.tenant_id = %L', p_tenant);
    INSERT INTO public.tenant_residency (tenant_id, epoch, writable)
    VALUES (p_tenant, p_epoch, true)
    ON CONFLICT (tenant_id) DO NOTHING;
END
$fn$
"""


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def upgrade() -> None:
    role = op.get_context().config.attributes["app_role"]
    bind = op.get_bind()
    if not bind.scalar(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}):
        raise RuntimeError(
            f"database role {role!r} does not exist: create it (LOGIN NOBYPASSRLS) first"
        )
    app = _ident(role)
    op.execute(ENTER_TENANT)
    op.execute(ADMIT_TENANT)
    for fn in (
        "meridian_enter_tenant(uuid, integer, boolean)",
        "meridian_admit_tenant(uuid, integer)",
    ):
        op.execute(f"REVOKE ALL ON FUNCTION {fn} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {fn} TO {app}")
    for table in ALL_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} USING ({POLICY}) WITH CHECK ({POLICY})"
        )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {app}")
    for table, updatable in APP_TABLES.items():
        op.execute(f"GRANT SELECT, INSERT, DELETE ON {table} TO {app}")
        if updatable:
            op.execute(f"GRANT UPDATE ({', '.join(updatable)}) ON {table} TO {app}")
    # Activities are immutable; deleting one happens only through its subject's cascade.
    op.execute(f"REVOKE DELETE ON activity FROM {app}")
    # On a Citus shard SET LOCAL reaches the workers only with
    # citus.propagate_set_commands = 'local': a database setting the shard's engine
    # decides, applied by every migration run (platform/migrations/shard/env.py).


def downgrade() -> None:
    role = _ident(op.get_context().config.attributes["app_role"])
    for table in ALL_TABLES:
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
        op.execute(f"REVOKE ALL ON {table} FROM {role}")
    op.execute("DROP FUNCTION IF EXISTS meridian_admit_tenant(uuid, integer)")
    op.execute("DROP FUNCTION IF EXISTS meridian_enter_tenant(uuid, integer, boolean)")
