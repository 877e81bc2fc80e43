"""A read-side enter function usable inside a query, for one-round-trip reads.

``meridian_read_as(tenant, epoch)`` does what ``meridian_enter_tenant(tenant, epoch,
false)`` does (residency check, ``SET LOCAL app.tenant_id``) and returns the tenant id, so
a by-id read can be one statement:

    SELECT s.* FROM meridian_read_as($2, $3) AS e(tid)
    CROSS JOIN LATERAL (SELECT ... FROM contact WHERE tenant_id = e.tid AND id = $1) AS s

The lateral reference makes the function run first (a function scan is evaluated in
full before it yields its row), so the row-level-security qual is evaluated after the
tenant is set; the statement's implicit transaction scopes the SET LOCAL.

Revision ID: shard_0006
Revises: shard_0005
"""

from __future__ import annotations

from alembic import op

revision = "shard_0006"
down_revision = "shard_0005"
branch_labels = None
depends_on = None

READ_AS = """
CREATE OR REPLACE FUNCTION meridian_read_as(p_tenant uuid, p_epoch integer)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
AS $fn$
BEGIN
    PERFORM meridian_enter_tenant(p_tenant, p_epoch, false);
    RETURN p_tenant;
END
$fn$
"""


def upgrade() -> None:
    role = op.get_context().config.attributes["app_role"]
    app = '"' + role.replace('"', '""') + '"'
    op.execute(READ_AS)
    op.execute("REVOKE ALL ON FUNCTION meridian_read_as(uuid, integer) FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION meridian_read_as(uuid, integer) TO {app}")


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS meridian_read_as(uuid, integer)")
