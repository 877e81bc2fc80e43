"""event outbox: the tenant's event log, its gapless sequence, the relay's position

``meridian_append_events`` appends a write's events in its transaction (see
meridian.events.outbox): it runs with the caller's rights, so row-level security checks
the tenant it writes for. ``meridian_relay_enter`` lets the relay enter a tenant like a
writer (the residency row FOR SHARE, so a move's fence waits for it and then keeps it
out) without knowing the directory's epoch. The relay finds the tenants with events to
publish in one query across tenants with ``SET LOCAL app.relay = 'on'``, which the
policies of ``event_sequence`` and ``event_relay`` (counters, no CRM data) honour; every
other table, ``event_outbox`` included, keeps the tenant policy alone.

Revision ID: shard_0008
Revises: shard_0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from meridian.migrate import lay_out_tables

revision = "shard_0008"
down_revision = "shard_0007"
branch_labels = None
depends_on = None

TENANT = "tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid"
RELAY = f"({TENANT}) OR current_setting('app.relay', true) = 'on'"

APPEND_EVENTS = """
CREATE OR REPLACE FUNCTION meridian_append_events(
    p_tenant uuid, p_actor_type text, p_actor_id text, p_events jsonb
)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $fn$
DECLARE
    n integer := jsonb_array_length(p_events);
    last bigint;
    e record;
BEGIN
    -- The counter row stays locked until the commit that follows: numbers are handed
    -- out in commit order, and a rollback gives them back.
    INSERT INTO public.event_sequence AS s (tenant_id, last_seq) VALUES (p_tenant, n)
    ON CONFLICT (tenant_id) DO UPDATE SET last_seq = s.last_seq + EXCLUDED.last_seq
    RETURNING s.last_seq INTO last;
    -- Row by row, not INSERT ... SELECT: Citus runs an INSERT ... SELECT of computed
    -- rows through COPY, which row-level security refuses; a single-row INSERT naming
    -- the tenant is routed to its shard.
    FOR e IN SELECT x.doc, x.ord FROM jsonb_array_elements(p_events) WITH ORDINALITY AS x(doc, ord)
    LOOP
        INSERT INTO public.event_outbox
            (tenant_id, seq, id, type, record_kind, record_id, owner_id, actor_type,
             actor_id, data)
        VALUES (p_tenant, last - n + e.ord, (e.doc->>'id')::uuid, e.doc->>'type',
                e.doc->>'kind', (e.doc->>'record_id')::uuid, (e.doc->>'owner_id')::uuid,
                p_actor_type, p_actor_id, e.doc->'data');
    END LOOP;
    RETURN last;
END
$fn$
"""

RELAY_ENTER = """
CREATE OR REPLACE FUNCTION meridian_relay_enter(p_tenant uuid)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
AS $fn$
DECLARE
    r_writable boolean;
BEGIN
    EXECUTE format('SET LOCAL app.tenant_id = %L', p_tenant);
    SELECT writable INTO r_writable
      FROM public.tenant_residency WHERE tenant_id = p_tenant FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % is not resident on this shard', p_tenant
              USING ERRCODE = 'MR003';
    END IF;
    IF NOT r_writable THEN
        RAISE EXCEPTION 'tenant % is fenced for writes', p_tenant USING ERRCODE = 'MR002';
    END IF;
END
$fn$
"""


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def upgrade() -> None:
    app = _ident(op.get_context().config.attributes["app_role"])
    op.create_table(
        "event_sequence",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_event_sequence")),
    )
    op.create_table(
        "event_relay",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("relayed_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("relayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_event_relay")),
    )
    op.create_table(
        "event_outbox",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("record_kind", sa.String(length=32), nullable=False),
        sa.Column("record_id", sa.Uuid(), nullable=True),
        sa.Column("owner_id", sa.Uuid(), nullable=True),
        sa.Column("actor_type", sa.String(length=8), nullable=False),
        sa.Column("actor_id", sa.String(length=255), nullable=True),
        sa.Column(
            "occurred_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("data", sa.dialects.postgresql.JSONB(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "seq", name=op.f("pk_event_outbox")),
    )
    op.create_index("uq_event_outbox_id", "event_outbox", ["tenant_id", "id"], unique=True)
    op.create_index(
        "ix_event_outbox_record", "event_outbox", ["tenant_id", "record_id", "seq"], unique=False
    )
    op.create_index(
        "ix_event_outbox_occurred", "event_outbox", ["tenant_id", "occurred_at"], unique=False
    )
    lay_out_tables("event_sequence", "event_relay", "event_outbox")
    for table, policy in (
        ("event_sequence", RELAY),
        ("event_relay", RELAY),
        ("event_outbox", TENANT),
    ):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} USING ({policy}) WITH CHECK ({TENANT})"
        )
    op.execute(f"GRANT SELECT, INSERT ON event_sequence TO {app}")
    op.execute(f"GRANT UPDATE (last_seq) ON event_sequence TO {app}")
    op.execute(f"GRANT SELECT, INSERT ON event_relay TO {app}")
    op.execute(f"GRANT UPDATE (relayed_seq, relayed_at) ON event_relay TO {app}")
    # Events are immutable; DELETE is retention's.
    op.execute(f"GRANT SELECT, INSERT, DELETE ON event_outbox TO {app}")
    op.execute(APPEND_EVENTS)
    op.execute(RELAY_ENTER)
    for fn in (
        "meridian_append_events(uuid, text, text, jsonb)",
        "meridian_relay_enter(uuid)",
    ):
        op.execute(f"REVOKE ALL ON FUNCTION {fn} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {fn} TO {app}")


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS meridian_relay_enter(uuid)")
    op.execute("DROP FUNCTION IF EXISTS meridian_append_events(uuid, text, text, jsonb)")
    op.drop_table("event_outbox")
    op.drop_table("event_relay")
    op.drop_table("event_sequence")
