"""search: the global search index of accounts, contacts, leads, opportunities, cases

- ``search_entry``, one per record: what ``GET /v1/search`` shows (the title and
  subtitle as the record has them), the record's owner (record scope), and its words
  folded (lower case, accents off, split by the 'simple' text search parser) as
  ``title_words`` and ``words`` (title, subtitle and the start of a case's description);
- ``search_term``, one per distinct word of an entry: the index a search reads, by
  ranges of its primary key (a word's prefix is one range in the C collation), whose
  key also holds the entry's owner, whether the word is in its title and how many words
  it has, so that a search reads this index alone until it has its page.

The app keeps both in the transaction of every write (meridian.search); this revision
fills them from the records already there. Sealed fields (emails, phones, tax ids) are
never copied: a search compares them through their own blind indexes.

Not a tsvector with a GIN index: under row-level security PostgreSQL uses an index only
for leakproof operators, and ``@@`` and ``@>`` are not (making them so takes a
superuser), so the app role's searches scanned every entry of the tenant; text
comparisons are leakproof. A tenant move also hashes rows (``hash_record_extended``),
which a tsvector column would fail. Folding uses built-in functions only: no extension
(the dev platform's embedded PostgreSQL has no ``unaccent``) and no function of ours,
which Citus would need on its workers.

Revision ID: shard_0015
Revises: shard_0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

from meridian.migrate import lay_out_tables

revision = "shard_0015"
down_revision = "shard_0014"
branch_labels = None
depends_on = None

TENANT = "tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid"
KINDS = "'account', 'contact', 'lead', 'opportunity', 'case'"
# Words longer than this stay out of the terms (a btree entry's size is limited).
MAX_TERM_BYTES = 200

# The entries as meridian.search.repository computes them at this revision (frozen here:
# a later change of the app's definition comes with its own revision and a rebuild).
_MARKS = r"[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]"
_SINGLE = {"Ø": "o", "ø": "o", "Ł": "l", "ł": "l", "Đ": "d", "đ": "d", "Ð": "d", "ð": "d"}
_SINGLE |= {"Ħ": "h", "ħ": "h", "Ŧ": "t", "ŧ": "t", "\u0131": "i"}
_DOUBLE = {"Æ": "ae", "æ": "ae", "Œ": "oe", "œ": "oe", "ß": "ss", "ẞ": "ss", "Þ": "th", "þ": "th"}
_NAME = "concat_ws(' ', r.first_name, r.last_name)"
# kind: (table, title, subtitle, text that only matches)
SOURCES = {
    "account": ("account", "r.name", "r.domain", "NULL"),
    "contact": ("contact", _NAME, "r.title", "NULL"),
    "lead": ("lead", _NAME, "NULLIF(concat_ws(' · ', r.company, r.title), '')", "NULL"),
    "opportunity": ("opportunity", "r.name", "NULL", "NULL"),
    "case": ('"case"', "r.subject", "NULL", "left(r.description, 1000)"),
}


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _fold(expr: str) -> str:
    folded = (
        f"translate(lower(regexp_replace(normalize({expr}, NFKD), {_literal(_MARKS)}, '', 'g')), "
        f"{_literal(''.join(_SINGLE))}, {_literal(''.join(_SINGLE.values()))})"
    )
    for letter, letters in _DOUBLE.items():
        folded = f"replace({folded}, {_literal(letter)}, {_literal(letters)})"
    return f"(CASE WHEN octet_length({expr}) = length({expr}) THEN lower({expr}) ELSE {folded} END)"


def _words(expr: str) -> str:
    return f"tsvector_to_array(to_tsvector('simple', {_fold(expr)}))"


def _backfill(kind: str) -> str:
    table, title, subtitle, body = SOURCES[kind]
    everything = f"concat_ws(' ', {title}, {subtitle}, {body})"
    return f"""
INSERT INTO search_entry
       (tenant_id, kind, record_id, owner_id, title, subtitle, title_words, words, updated_at)
SELECT r.tenant_id, '{kind}', r.id, r.owner_id, {title}, {subtitle},
       {_words(title)}, {_words(everything)}, now()
  FROM {table} r
"""  # noqa: S608


TERMS = f"""
INSERT INTO search_term (tenant_id, term, kind, record_id, owner_id, in_title, entry_words)
SELECT e.tenant_id, w.term, e.kind, e.record_id,
       coalesce(e.owner_id, '00000000-0000-0000-0000-000000000000'),
       w.term = ANY(e.title_words), cardinality(e.words)
  FROM search_entry e CROSS JOIN LATERAL unnest(e.words) AS w(term)
 WHERE octet_length(w.term) <= {MAX_TERM_BYTES}
"""  # noqa: S608 - a constant


def upgrade() -> None:
    app = _ident(op.get_context().config.attributes["app_role"])
    words = ARRAY(sa.Text(collation="C"))
    op.create_table(
        "search_entry",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(16, collation="C"), nullable=False),
        sa.Column("record_id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("subtitle", sa.Text(), nullable=True),
        sa.Column("title_words", words, nullable=False),
        sa.Column("words", words, nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(f"kind IN ({KINDS})", name=op.f("ck_search_entry_kind")),
        sa.PrimaryKeyConstraint("tenant_id", "kind", "record_id", name=op.f("pk_search_entry")),
    )
    op.create_table(
        "search_term",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("term", sa.Text(collation="C"), nullable=False),
        sa.Column("kind", sa.String(16, collation="C"), nullable=False),
        sa.Column("record_id", sa.Uuid(), nullable=False),
        # The nil uuid when the record has no owner (a key column cannot be null).
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("in_title", sa.Boolean(), nullable=False),
        sa.Column("entry_words", sa.SmallInteger(), nullable=False),
        sa.CheckConstraint(f"kind IN ({KINDS})", name=op.f("ck_search_term_kind")),
        # Every column in the key, so a search reads this index alone (not INCLUDE: a
        # move's verification takes pg_index.indkey, included columns too, for the key).
        sa.PrimaryKeyConstraint(
            "tenant_id",
            "term",
            "kind",
            "record_id",
            "owner_id",
            "in_title",
            "entry_words",
            name=op.f("pk_search_term"),
        ),
    )
    # Citus: distributed on tenant_id, colocated with the others (a no-op on PostgreSQL).
    lay_out_tables("search_entry", "search_term")
    for table in ("search_entry", "search_term"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} USING ({TENANT}) WITH CHECK ({TENANT})"
        )
        op.execute(f"GRANT SELECT, INSERT, DELETE ON {table} TO {app}")
    op.execute(
        "GRANT UPDATE (owner_id, title, subtitle, title_words, words, updated_at) "
        f"ON search_entry TO {app}"
    )
    # The records already there, every tenant's: as the tables' owner, whom forced RLS
    # would bind (a superuser it does not), each source table's FORCE is lifted for its
    # copy and put back in this same transaction; the app role is bound by RLS
    # throughout. The new tables are FORCEd once filled.
    for kind, (table, *_) in SOURCES.items():
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(_backfill(kind))
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(TERMS)
    for table in ("search_entry", "search_term"):
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        # Statistics for the search's plans from the start (a large backfill would
        # otherwise be planned as an empty table until autovacuum comes by).
        op.execute(f"ANALYZE {table}")


def downgrade() -> None:
    op.drop_table("search_term")
    op.drop_table("search_entry")
