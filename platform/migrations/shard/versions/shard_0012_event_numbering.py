"""event numbering: writes append to ``event_pending``; events get their ``seq`` later

Until this revision a write numbered its events itself, holding the tenant's counter row
from its last statement to its commit: one tenant's writes serialised on their commit.
Now a write only inserts its events into ``event_pending`` (ordered by ``pos``, a
shard-wide sequence), and ``meridian_number_events`` moves the committed ones into
``event_outbox`` under the counter row's lock, numbering them in the order it finds them
(see meridian.events.outbox for why that order keeps each record's events in order).
The relay calls it before it publishes, and readers of the log call it when something
waits, so the API still reads its own writes.

``meridian_pending_tenants`` names the tenants with events to number (ids only) to the
relay, which cannot read ``event_pending`` across tenants: its rows are CRM data.

Revision ID: shard_0012
Revises: shard_0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from meridian.migrate import lay_out_tables

revision = "shard_0012"
down_revision = "shard_0011"
branch_labels = None
depends_on = None

TENANT = "tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid"

NUMBER_EVENTS = """
CREATE OR REPLACE FUNCTION meridian_number_events(p_tenant uuid, p_limit integer)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $fn$
DECLARE
    last bigint;
    e record;
    taken bigint[] := '{}';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM public.event_pending WHERE tenant_id = p_tenant) THEN
        RETURN 0;
    END IF;
    INSERT INTO public.event_sequence (tenant_id, last_seq) VALUES (p_tenant, 0)
    ON CONFLICT (tenant_id) DO NOTHING;
    -- One numberer per tenant at a time. The statements below take their snapshots
    -- after this lock is granted, so they see every event committed before it.
    SELECT s.last_seq INTO last FROM public.event_sequence s
     WHERE s.tenant_id = p_tenant FOR UPDATE;
    -- Row by row, not INSERT ... SELECT: Citus runs an INSERT ... SELECT through the
    -- coordinator with COPY, which row-level security refuses; single-row statements
    -- naming the tenant are routed to its shard.
    FOR e IN SELECT * FROM public.event_pending
              WHERE tenant_id = p_tenant ORDER BY pos LIMIT p_limit
    LOOP
        last := last + 1;
        INSERT INTO public.event_outbox
            (tenant_id, seq, id, type, record_kind, record_id, owner_id, actor_type,
             actor_id, occurred_at, data)
        VALUES (p_tenant, last, e.id, e.type, e.record_kind, e.record_id, e.owner_id,
                e.actor_type, e.actor_id, e.occurred_at, e.data);
        taken := taken || e.pos;
    END LOOP;
    IF cardinality(taken) = 0 THEN
        RETURN 0;
    END IF;
    -- Exactly the rows numbered: one committed since the loop's snapshot (a lower pos
    -- than some of them, even) waits for the next call.
    DELETE FROM public.event_pending WHERE tenant_id = p_tenant AND pos = ANY(taken);
    UPDATE public.event_sequence SET last_seq = last WHERE tenant_id = p_tenant;
    RETURN cardinality(taken);
END
$fn$
"""

PENDING_TENANTS = """
CREATE OR REPLACE FUNCTION meridian_pending_tenants(p_limit integer)
RETURNS SETOF uuid
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public
AS $fn$
    SELECT DISTINCT tenant_id FROM public.event_pending LIMIT p_limit
$fn$
"""

# shard_0008's, for the downgrade.
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
    INSERT INTO public.event_sequence AS s (tenant_id, last_seq) VALUES (p_tenant, n)
    ON CONFLICT (tenant_id) DO UPDATE SET last_seq = s.last_seq + EXCLUDED.last_seq
    RETURNING s.last_seq INTO last;
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


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def upgrade() -> None:
    app = _ident(op.get_context().config.attributes["app_role"])
    op.create_table(
        "event_pending",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        # Shard-wide, so it orders a tenant's events however its writers interleave.
        sa.Column("pos", sa.BigInteger(), sa.Identity(always=False), nullable=False),
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
        # Keyed by the event's id, not pos: a move brings a tenant's waiting events with
        # the source's pos, which the target's sequence may draw again.
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_event_pending")),
    )
    op.create_index("ix_event_pending_pos", "event_pending", ["tenant_id", "pos"], unique=False)
    lay_out_tables("event_pending")
    op.execute("ALTER TABLE event_pending ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE event_pending FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON event_pending USING ({TENANT}) WITH CHECK ({TENANT})"
    )
    # Writers insert; the numberer reads and deletes. Nobody updates.
    op.execute(f"GRANT SELECT, INSERT, DELETE ON event_pending TO {app}")
    op.execute(NUMBER_EVENTS)
    op.execute(PENDING_TENANTS)
    for fn in ("meridian_number_events(uuid, integer)", "meridian_pending_tenants(integer)"):
        op.execute(f"REVOKE ALL ON FUNCTION {fn} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {fn} TO {app}")
    op.execute("DROP FUNCTION IF EXISTS meridian_append_events(uuid, text, text, jsonb)")


def downgrade() -> None:
    app = _ident(op.get_context().config.attributes["app_role"])
    # What waits is numbered first: nothing is lost going back.
    op.execute(
        "SELECT meridian_number_events(t, NULL) "
        "FROM (SELECT DISTINCT tenant_id AS t FROM event_pending) AS p"
    )
    op.execute(APPEND_EVENTS)
    op.execute("REVOKE ALL ON FUNCTION meridian_append_events(uuid, text, text, jsonb) FROM PUBLIC")
    op.execute(
        f"GRANT EXECUTE ON FUNCTION meridian_append_events(uuid, text, text, jsonb) TO {app}"
    )
    op.execute("DROP FUNCTION IF EXISTS meridian_pending_tenants(integer)")
    op.execute("DROP FUNCTION IF EXISTS meridian_number_events(uuid, integer)")
    op.drop_table("event_pending")
