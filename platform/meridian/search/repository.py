"""The search index's SQL: writing entries and terms from the records' rows, and
searching the terms.

Every entry is computed from its record's row by one ``INSERT … SELECT … ON CONFLICT DO
UPDATE`` over the record's table (``SOURCES``), and its terms from the entry: for one
record in the transaction that wrote it, for a whole tenant in a rebuild (and, frozen in
its migration, for every tenant in shard_0015). Computing the words in the database
keeps one definition of them (``fold``, then PostgreSQL's 'simple' parser): the query's
words come from the same expression (``terms``), so an entry and a query always agree.

``fold`` uses built-in functions only (``normalize``, ``regexp_replace``, ``translate``,
``lower``): no extension (the dev platform's embedded PostgreSQL has no ``unaccent``)
and no function of our own that Citus would have to have created on its workers.

A search reads ``search_term`` by ranges of its primary key (leakproof text comparisons:
usable under row-level security, see ``meridian.search.models``), groups the matching
terms per record and word, keeps the records that match every word, ranks them, applies
the record scope, and only then reads the page's entries for their titles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Double,
    Integer,
    LargeBinary,
    Select,
    String,
    Text,
    TextClause,
    Uuid,
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from authz.scope import visible_to
from meridian.crud.compiled import prepared
from meridian.crud.repository import TenantRepository
from meridian.search.models import KINDS, SearchEntry, SearchTerm

# -- the words -----------------------------------------------------------------------------
# Combining marks NFKD splits off accented letters (é = e + U+0301), for every script.
_MARKS = r"[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]"
# Latin letters without a decomposition, in both cases (lower() leaves non-ASCII letters
# alone under the C locale): one letter each, then the ones that become two.
_SINGLE = {"Ø": "o", "ø": "o", "Ł": "l", "ł": "l", "Đ": "d", "đ": "d", "Ð": "d", "ð": "d"}
_SINGLE |= {"Ħ": "h", "ħ": "h", "Ŧ": "t", "ŧ": "t", "\u0131": "i"}
_DOUBLE = {"Æ": "ae", "æ": "ae", "Œ": "oe", "œ": "oe", "ß": "ss", "ẞ": "ss", "Þ": "th", "þ": "th"}


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def fold(expr: str) -> str:
    """SQL folding the text ``expr`` for search: accents off, lower case. ASCII text
    (most names) only needs lower(). Under any locale for Latin letters; other scripts'
    cases fold as the database's locale does (and the parser lower-cases again)."""
    folded = (
        f"translate(lower(regexp_replace(normalize({expr}, NFKD), {_literal(_MARKS)}, '', 'g')), "
        f"{_literal(''.join(_SINGLE))}, {_literal(''.join(_SINGLE.values()))})"
    )
    for letter, letters in _DOUBLE.items():
        folded = f"replace({folded}, {_literal(letter)}, {_literal(letters)})"
    return f"(CASE WHEN octet_length({expr}) = length({expr}) THEN lower({expr}) ELSE {folded} END)"


def words(expr: str) -> str:
    """The sorted, unique folded words of ``expr`` (a text[]), as the index keeps them."""
    return f"tsvector_to_array(to_tsvector('simple', {fold(expr)}))"


# -- what each kind contributes ------------------------------------------------------------
# A case's description counts for matching up to this many characters (a tsvector of a
# long text would make the entry, and the index, large for little use).
BODY_CHARS = 1000


@dataclass(frozen=True, slots=True)
class Source:
    """A kind's table and the SQL over its columns for the entry's title, subtitle and
    the text that only matches (``body``); ``columns`` are what they read, so an update
    that changes none of them (nor the owner) leaves the entry alone."""

    table: str
    title: str
    subtitle: str = "NULL"
    body: str = "NULL"
    columns: frozenset[str] = frozenset()


_NAME = "concat_ws(' ', r.first_name, r.last_name)"
SOURCES: Mapping[str, Source] = {
    "account": Source("account", "r.name", "r.domain", columns=frozenset({"name", "domain"})),
    "contact": Source(
        "contact", _NAME, "r.title", columns=frozenset({"first_name", "last_name", "title"})
    ),
    "lead": Source(
        "lead",
        _NAME,
        "NULLIF(concat_ws(' · ', r.company, r.title), '')",
        columns=frozenset({"first_name", "last_name", "company", "title"}),
    ),
    "opportunity": Source("opportunity", "r.name", columns=frozenset({"name"})),
    # "case" is an SQL keyword: quoted.
    "case": Source(
        '"case"',
        "r.subject",
        body=f"left(r.description, {BODY_CHARS})",
        columns=frozenset({"subject", "description"}),
    ),
}
# What an entry also follows: its record's owner (record scope).
OWNER = "owner_id"


def indexed_columns(kind: str) -> frozenset[str]:
    return SOURCES[kind].columns | {OWNER}


# A term's owner when its record has none (its key cannot be null): no user's id.
NO_OWNER = "00000000-0000-0000-0000-000000000000"
# Longer words are left out of the terms (a btree entry has a size limit; nobody types
# them): a query word this long matches nothing.
MAX_TERM_BYTES = 200


def _entries_sql(kind: str, records: str) -> str:
    """The statement writing the entries, and their terms, of the ``kind`` records
    ``records`` (a condition on the record table ``r``) selects: one statement, one
    round trip in the write's transaction."""
    source = SOURCES[kind]
    everything = f"concat_ws(' ', {source.title}, {source.subtitle}, {source.body})"
    # The kind and the SQL come from SOURCES, not from input.
    return f"""
WITH e AS (
INSERT INTO search_entry AS e
       (tenant_id, kind, record_id, owner_id, title, subtitle, title_words, words, updated_at)
SELECT r.tenant_id, '{kind}', r.id, r.owner_id, {source.title}, {source.subtitle},
       {words(source.title)}, {words(everything)}, now()
  FROM {source.table} r
 WHERE r.tenant_id = :tenant_id AND {records}
ON CONFLICT (tenant_id, kind, record_id) DO UPDATE
   SET owner_id = EXCLUDED.owner_id, title = EXCLUDED.title, subtitle = EXCLUDED.subtitle,
       title_words = EXCLUDED.title_words, words = EXCLUDED.words,
       updated_at = EXCLUDED.updated_at
RETURNING e.tenant_id, e.kind, e.record_id, e.owner_id, e.title_words, e.words
)
INSERT INTO search_term (tenant_id, term, kind, record_id, owner_id, in_title, entry_words)
SELECT e.tenant_id, w.term, e.kind, e.record_id, coalesce(e.owner_id, '{NO_OWNER}'),
       w.term = ANY(e.title_words), cardinality(e.words)
  FROM e CROSS JOIN LATERAL unnest(e.words) AS w(term)
 WHERE octet_length(w.term) <= {MAX_TERM_BYTES}
ON CONFLICT DO NOTHING
"""  # noqa: S608


# One statement per kind and purpose, built once.
WRITE_ONE: Mapping[str, TextClause] = {k: text(_entries_sql(k, "r.id = :record_id")) for k in KINDS}
WRITE_MANY: Mapping[str, TextClause] = {
    k: text(_entries_sql(k, "r.id = ANY(CAST(:record_ids AS uuid[]))")) for k in KINDS
}
WRITE_ALL: Mapping[str, TextClause] = {k: text(_entries_sql(k, "true")) for k in KINDS}
# A record's terms, found by the words its entry has (the primary key's ranges).
FORGET_TERMS = text(
    "DELETE FROM search_term t USING search_entry e"
    " WHERE e.tenant_id = :tenant_id AND e.kind = :kind AND e.record_id = :record_id"
    " AND t.tenant_id = :tenant_id AND t.term = ANY(e.words) AND t.kind = :kind"
    " AND t.record_id = :record_id"
)
FORGET_ONE = text(
    "DELETE FROM search_entry WHERE tenant_id = :tenant_id AND kind = :kind "
    "AND record_id = :record_id"
)
FORGET_TENANT = (
    text("DELETE FROM search_term WHERE tenant_id = :tenant_id"),
    text("DELETE FROM search_entry WHERE tenant_id = :tenant_id"),
)
COUNT_TENANT = text(
    "SELECT kind, count(*) FROM search_entry WHERE tenant_id = :tenant_id GROUP BY kind"
)


class SearchIndex:
    """The index's writes in a shard transaction (a record's write, or a rebuild).

    Not a ``TenantRepository``: an entry is derived from its record, and its writes
    append no events (the record's own events say what changed).
    """

    def __init__(self, session: AsyncSession, tenant_id: UUID) -> None:
        self.session = session
        self.tenant_id = tenant_id

    async def write(self, kind: str, record_id: UUID) -> None:
        """The record's entry and terms from its row as this transaction sees it (a new
        record's are written at commit: ``search.service.keep_entry``)."""
        key = {"tenant_id": self.tenant_id, "kind": kind, "record_id": record_id}
        await self.session.execute(FORGET_TERMS, key)
        await self.session.execute(
            WRITE_ONE[kind], {"tenant_id": self.tenant_id, "record_id": record_id}
        )

    async def forget(self, kind: str, record_id: UUID) -> None:
        key = {"tenant_id": self.tenant_id, "kind": kind, "record_id": record_id}
        await self.session.execute(FORGET_TERMS, key)
        await self.session.execute(FORGET_ONE, key)

    async def rebuild(self) -> dict[str, int]:
        """Every entry (and term) of the tenant afresh from its records; entries written
        per kind."""
        tenant = {"tenant_id": self.tenant_id}
        for statement in FORGET_TENANT:
            await self.session.execute(statement, tenant)
        for kind in KINDS:
            await self.session.execute(WRITE_ALL[kind], tenant)
        rows = (await self.session.execute(COUNT_TENANT, tenant)).all()
        counted: dict[str, int] = {row[0]: int(row[1]) for row in rows}
        return {kind: counted.get(kind, 0) for kind in KINDS}


# -- searching, on the raw read path (meridian.crud.endpoints.read) ------------------------
TERMS_SQL = f"SELECT {words('$1::text')}"


async def terms(conn: asyncpg.Connection, q: str) -> list[str]:
    """The words of a query, folded and split exactly as the entries' are."""
    found: list[str] | None = await conn.fetchval(TERMS_SQL, q)
    return found or []


E = SearchEntry
T = SearchTerm
_TENANT: BindParameter[UUID] = bindparam("tenant", type_=Uuid())
_VIEWER: BindParameter[UUID] = bindparam("viewer", type_=Uuid())
_KINDS: BindParameter[Any] = bindparam("kinds", type_=ARRAY(String()))
_ROWS: BindParameter[int] = bindparam("rows", type_=Integer())
_AFTER_RANK: BindParameter[float] = bindparam("after_rank", type_=Double())
_AFTER_KIND: BindParameter[str] = bindparam("after_kind", type_=String())
_AFTER_ID: BindParameter[UUID] = bindparam("after_id", type_=Uuid())
_IDS: BindParameter[Any] = bindparam("ids", type_=ARRAY(Uuid()))
NO_JIT = "SET LOCAL jit = off"
# The tiers of a match (rank's integer part), best first.
IDENTIFIED, EXACT_TITLE, EXACT, TITLE_PREFIX = 4, 3, 2, 1


def _constant(value: str | int) -> ColumnElement[Any]:
    """A constant of the SQL itself (a kind, a tier): the planner sees it, where a
    parameter would be unknown to a generic plan. Never input: the kinds and tiers."""
    return literal_column(f"'{value}'" if isinstance(value, str) else str(value))


def _rank(tier: ColumnElement[Any], words: ColumnElement[Any]) -> ColumnElement[float]:
    """The tier, then fewer words (a closer match) first: deterministic per (query,
    entry), so a cursor can name a place in the order."""
    fraction = literal_column("1.0::float8") / cast(_constant(1) + words, Double())
    return cast(tier, Double()) + fraction


def identifier_param(kind: str, field: str) -> str:
    """The parameter holding the blind indexes a search compares ``kind.field`` with."""
    return f"{kind}_{field}"


def word_param(n: int) -> str:
    return f"word_{n}"


def upper_param(n: int) -> str:
    return f"upper_{n}"


def _hits(count: int) -> Any:
    """Every term that is one of the query's ``count`` words or starts with it: one
    range of the primary key per word, bounds as parameters (which the planner
    estimates as a narrow range; one shape per number of words)."""
    branches = []
    for n in range(count):
        word = bindparam(word_param(n), type_=Text())
        branches.append(
            select(
                T.record_id,
                _constant(n).label("n"),
                T.kind,
                T.owner_id,
                T.entry_words,
                T.in_title,
                (T.term == word).label("exact"),
            ).where(
                T.tenant_id == _TENANT,
                T.term >= word,
                T.term < bindparam(upper_param(n), type_=Text()),
                T.kind == any_(_KINDS),
            )
        )
    return (branches[0] if count == 1 else union_all(*branches)).subquery("hits")


def _matched(count: int) -> Select[Any]:
    """The records with every word of the query as a word or a word's start, ranked."""
    h = _hits(count).c
    if count == 1:
        # One word (a name being typed, the most common search): one grouping.
        tier = case(
            (func.bool_or(and_(h.in_title, h.exact)), _constant(EXACT_TITLE)),
            (func.bool_or(h.exact), _constant(EXACT)),
            (func.bool_or(h.in_title), _constant(TITLE_PREFIX)),
            else_=_constant(0),
        )
        return select(
            h.kind, h.record_id, h.owner_id, _rank(tier, h.entry_words).label("rank")
        ).group_by(h.record_id, h.kind, h.owner_id, h.entry_words)
    # Per record and word: how it matched (the word itself, in the title, ...).
    per_word = (
        select(
            h.record_id,
            h.kind,
            h.owner_id,
            h.entry_words,
            func.bool_or(and_(h.in_title, h.exact)).label("exact_title"),
            func.bool_or(h.exact).label("exact"),
            func.bool_or(h.in_title).label("title"),
        )
        # The record first: uuids sort quicker than anything else here.
        .group_by(h.record_id, h.n, h.kind, h.owner_id, h.entry_words)
        .subquery("per_word")
    )
    m = per_word.c
    tier = case(
        (func.bool_and(m.exact_title), _constant(EXACT_TITLE)),
        (func.bool_and(m.exact), _constant(EXACT)),
        (func.bool_and(m.title), _constant(TITLE_PREFIX)),
        else_=_constant(0),
    )
    return (
        select(m.kind, m.record_id, m.owner_id, _rank(tier, m.entry_words).label("rank"))
        .group_by(m.record_id, m.kind, m.owner_id, m.entry_words)
        .having(func.count() == _constant(count))
    )


Found = Select[str, UUID, UUID, float]


def _identified(identifiers: Mapping[str, Sequence[str]]) -> Found | None:
    """Entries whose record holds one of the searched identifiers (sealed fields, found
    by blind index in the record's own table: the index never holds them)."""
    arms: list[ColumnElement[bool]] = []
    for kind, fields in sorted(identifiers.items()):
        repo = TenantRepository.for_kind(kind)
        if repo is None or not fields:
            continue
        matches = [
            repo.attr(f"{field}_bidx")
            == any_(bindparam(identifier_param(kind, field), type_=ARRAY(LargeBinary())))
            for field in sorted(fields)
        ]
        ids = select(repo.attr("id")).where(repo.attr("tenant_id") == _TENANT, or_(*matches))
        arms.append(
            and_(
                E.kind == _constant(kind),
                E.record_id == any_(func.array(ids.scalar_subquery())),
            )
        )
    if not arms:
        return None
    rank = _rank(_constant(IDENTIFIED), func.cardinality(E.words))
    # The owner as the terms have it, so a record found both ways is one group.
    owner = func.coalesce(E.owner_id, literal_column(f"'{NO_OWNER}'::uuid")).label("owner_id")
    return select(E.kind, E.record_id, owner, rank.label("rank")).where(
        E.tenant_id == _TENANT, E.kind == any_(_KINDS), or_(*arms)
    )


def _in_scope(
    kind: ColumnElement[Any], owner: ColumnElement[Any], record: ColumnElement[Any]
) -> ColumnElement[bool]:
    """What a scoped viewer sees: each kind's records by the lists' predicate, with the
    record's kind for its shares."""
    return or_(
        *(and_(kind == _constant(k), visible_to(owner, record, k, _TENANT, _VIEWER)) for k in KINDS)
    )


def _search_statement(
    count: int, scoped: bool, identifiers: Mapping[str, Sequence[str]]
) -> Select[Any]:
    matched = _matched(count)
    identified = _identified(identifiers)
    found = matched
    if identified is not None:
        # A record found both ways ranks as its best.
        both = union_all(matched, identified).subquery("found")
        f = both.c
        found = select(f.kind, f.record_id, f.owner_id, func.max(f.rank).label("rank")).group_by(
            f.record_id, f.kind, f.owner_id
        )
    # OFFSET 0 keeps the page's conditions out of the grouping: each record's rank is
    # computed once, where PostgreSQL would repeat its expression in the HAVING.
    candidates = found.offset(literal_column("0")).subquery("candidates")
    c = candidates.c
    after = or_(
        c.rank < _AFTER_RANK,
        and_(c.rank == _AFTER_RANK, tuple_(c.kind, c.record_id) > tuple_(_AFTER_KIND, _AFTER_ID)),
    )
    where = [after]
    if scoped:
        where.append(_in_scope(c.kind, c.owner_id, c.record_id))
    # The page first, then its entries' titles (a page, not every match).
    page = (
        select(c.kind, c.record_id, c.rank)
        .where(*where)
        .order_by(c.rank.desc(), c.kind, c.record_id)
        .limit(_ROWS)
        .subquery("page")
    )
    p = page.c
    return (
        select(p.kind, p.record_id, E.title, E.subtitle, p.rank)
        .join_from(
            page,
            E,
            and_(E.tenant_id == _TENANT, E.kind == p.kind, E.record_id == p.record_id),
        )
        .order_by(p.rank.desc(), p.kind, p.record_id)
    )


_NIL = UUID(int=0)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page starts: after this (rank, kind, record id); the first page starts
    after an infinite rank."""

    rank: float = float("inf")
    kind: str = ""
    record_id: UUID = _NIL


async def search_page(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    viewer: UUID | None,
    *,
    kinds: Sequence[str],
    words: Sequence[str],
    identifiers: Mapping[str, Mapping[str, list[bytes]]],
    after: Position,
    rows: int,
) -> list[asyncpg.Record]:
    """Up to ``rows`` entries of ``kinds`` (best first) that have every word of
    ``words`` as a word or the start of one, or whose record holds one of
    ``identifiers`` (kind → field → blind indexes), within ``viewer``'s record scope
    (None: every record)."""
    fields = {kind: tuple(sorted(found)) for kind, found in identifiers.items() if found}
    key = ("search", len(words), viewer is not None, tuple(sorted(fields.items())))
    template = prepared(key, lambda: _search_statement(len(words), viewer is not None, fields))
    values: dict[str, Any] = {
        "tenant": tenant_id,
        "kinds": list(kinds),
        "after_rank": after.rank,
        "after_kind": after.kind,
        "after_id": after.record_id,
        "rows": rows,
    }
    for n, word in enumerate(words):
        values[word_param(n)] = word
        values[upper_param(n)] = upper_bound(word)
    if viewer is not None:
        values["viewer"] = viewer
    for kind, by_field in identifiers.items():
        for field, indexes in by_field.items():
            values[identifier_param(kind, field)] = indexes
    # A generic plan's estimates for this statement (a range per word, the scope's
    # subplans) run past jit_above_cost, and compiling it then took longer than the
    # search itself (~0.2 s at 200,000 records; seconds on a busy machine). SET LOCAL:
    # this transaction only, and Citus passes it to its workers.
    await conn.execute(NO_JIT)
    found: list[asyncpg.Record] = await conn.fetch(template.sql, *template.args(values))
    return found


def upper_bound(word: str) -> str:
    """The least string above every string that starts with ``word``, in byte order
    (the C collation; UTF-8 keeps code point order): its last character's successor."""
    last = ord(word[-1]) + 1
    if 0xD800 <= last <= 0xDFFF:
        last = 0xE000  # surrogates are not characters
    if last > 0x10FFFF:
        return word + chr(0x10FFFF)
    return word[:-1] + chr(last)


# -- the records themselves (a search's include=record) ------------------------------------
def _records_statement(kind: str, scoped: bool) -> Select[Any]:
    repo = TenantRepository.for_kind(kind)
    assert repo is not None
    stmt = select(*repo.read_columns()).where(
        repo.attr("tenant_id") == _TENANT, repo.attr("id") == any_(_IDS)
    )
    if not scoped:
        return stmt
    # The lists' predicate, as the search's own (the entry's owner is the record's).
    return stmt.where(visible_to(repo.attr(OWNER), repo.attr("id"), kind, _TENANT, _VIEWER))


async def records(
    conn: asyncpg.Connection, tenant_id: UUID, viewer: UUID | None, kind: str, ids: list[UUID]
) -> dict[UUID, dict[str, Any]]:
    """The rows of these records of ``kind`` that ``viewer`` may see, as their
    repository reads them (sealed fields still sealed), by id."""
    repo = TenantRepository.for_kind(kind)
    if repo is None or not ids:
        return {}
    scoped = repo.is_scoped_for(viewer)
    template = prepared(("search-records", kind, scoped), lambda: _records_statement(kind, scoped))
    values: dict[str, Any] = {"tenant": tenant_id, "ids": ids}
    if scoped:
        values["viewer"] = viewer
    rows = await conn.fetch(template.sql, *template.args(values))
    return {row["id"]: dict(repo.row_from(row)) for row in rows}
