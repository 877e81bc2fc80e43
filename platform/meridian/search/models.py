"""The search index: one entry per account, contact, lead, opportunity and case, and
one term per distinct word of an entry.

Both are derived data: what ``GET /v1/search`` matches, ranks and shows of a record,
kept in the transaction of every write of the record (``meridian.search.service``) and
computed from the record's row by SQL (``meridian.search.repository``), so a rebuild
gives the same rows. Sealed fields (emails, phones, tax ids) are never in them.

Why a table of terms rather than a tsvector and a GIN index: under row-level security
PostgreSQL uses an index only for leakproof operators, and neither ``@@`` nor ``@>`` is
one (marking them so needs a superuser), so for the app role a GIN search scanned every
entry of the tenant. Text comparisons are leakproof: a word's prefix is a btree range
of ``search_term`` (``term >= 'jo' AND term < 'jp'``, in the C collation), whatever the
role. And a tenant move compares rows with ``hash_record_extended``, which has no hash
for tsvector.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args
from uuid import UUID

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    SmallInteger,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from tenancy.planes import ShardBase, TenantScoped

SearchKind = Literal["account", "contact", "lead", "opportunity", "case"]
KINDS: tuple[str, ...] = get_args(SearchKind)
_KIND_CHECK = "kind IN ('account', 'contact', 'lead', 'opportunity', 'case')"


class SearchEntry(TenantScoped, ShardBase):
    """What a result shows of a record, and the words it is found by."""

    __tablename__ = "search_entry"
    __table_args__ = (CheckConstraint(_KIND_CHECK, name="kind"),)

    # Byte order (C), as everywhere the search sorts or groups: cheaper than a locale's.
    kind: Mapped[str] = mapped_column(String(16, collation="C"), primary_key=True, sort_order=-10)
    record_id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-9)
    # The record's owner, for record scope (authz.scope, as the lists).
    owner_id: Mapped[UUID | None]
    # As the record has them (see repository.SOURCES).
    title: Mapped[str] = mapped_column(Text)
    subtitle: Mapped[str | None] = mapped_column(Text)
    # Folded words (lower case, accents off, the 'simple' parser's tokens), sorted and
    # unique: the title's, and the whole entry's (title, subtitle, a case's description).
    title_words: Mapped[list[str]] = mapped_column(ARRAY(Text(collation="C")))
    words: Mapped[list[str]] = mapped_column(ARRAY(Text(collation="C")))
    # When the entry was last written.
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SearchTerm(TenantScoped, ShardBase):
    """One word of an entry: the search's index. Every column is part of the primary
    key, so that a search reads that index alone (a key of tenant, term, kind and
    record is unique by construction: an entry's words are unique). Not an INCLUDE
    index: a tenant move compares rows by their primary key's columns, and reads them
    from pg_index.indkey, which lists included columns too."""

    __tablename__ = "search_term"
    __table_args__ = (CheckConstraint(_KIND_CHECK, name="kind"),)

    # Byte order (C): a prefix's matches are one range of the index.
    term: Mapped[str] = mapped_column(Text(collation="C"), primary_key=True, sort_order=-10)
    kind: Mapped[str] = mapped_column(String(16, collation="C"), primary_key=True, sort_order=-9)
    record_id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-8)
    # Copies of the entry's: its owner (record scope; the nil uuid when it has none,
    # which no user is), whether the word is in its title, and how many words it has
    # (the rank prefers fewer).
    owner_id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-7)
    in_title: Mapped[bool] = mapped_column(Boolean, primary_key=True, sort_order=-6)
    entry_words: Mapped[int] = mapped_column(SmallInteger, primary_key=True, sort_order=-5)
