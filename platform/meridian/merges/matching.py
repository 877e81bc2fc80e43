"""How two records match: the fields a duplicate rule compares per kind, the similarity
of two texts, the candidates' key, and the rules that apply when a tenant has none.

Similarity is trigram similarity as PostgreSQL's pg_trgm computes it (``similarity()``:
the trigrams two texts share over all the trigrams of either, words lower-cased and
padded), computed here in Python on a bounded set of candidates. pg_trgm itself is not
used: the embedded PostgreSQL of ``meridian dev`` ships no contrib module, so an index or
a query on it would work on some deployments only. Candidates are found through indexes
every shard has: blind indexes, plain columns, and ``match_key`` (an expression index of
shard revision 0017), the first three letters or digits of a name. Two names whose keys
differ ("Smith" and "Smyth") are compared only when another condition of some rule (the
same email, the same account) brings them together — the match keys' usual trade-off.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from sqlalchemy import ColumnElement, func, literal_column

# The objects a rule or a merge is about: the API's plural -> the record kind (its table).
OBJECTS: Mapping[str, str] = {"accounts": "account", "contacts": "contact", "leads": "lead"}
PLURALS: Mapping[str, str] = {kind: plural for plural, kind in OBJECTS.items()}
# Candidates one rule reads at most (the first by id); a rule whose key is that common is
# better made stricter (another condition) than read whole.
MAX_CANDIDATES = 1_000
KEY_LENGTH = 3
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True, slots=True)
class MatchField:
    """A field a rule may compare. ``columns`` are joined by a space (a full name);
    ``sealed`` fields are compared by blind index, exactly; ``fuzzy`` ones may also be
    compared by similarity; ``key`` is the column whose match key finds candidates, and
    ``column`` one compared in SQL as it is (an indexed id or domain)."""

    columns: tuple[str, ...]
    sealed: bool = False
    fuzzy: bool = False
    key: str | None = None
    column: str | None = None


_SEALED = MatchField((), sealed=True)
_PERSON = {
    "full_name": MatchField(("first_name", "last_name"), fuzzy=True, key="last_name"),
    "last_name": MatchField(("last_name",), fuzzy=True, key="last_name"),
}
FIELDS: Mapping[str, Mapping[str, MatchField]] = {
    "account": {
        "name": MatchField(("name",), fuzzy=True, key="name"),
        "domain": MatchField(("domain",), column="domain"),
        "tax_id": _SEALED,
    },
    "contact": {
        "email": _SEALED,
        "phone": _SEALED,
        "tax_id": _SEALED,
        **_PERSON,
        "account_id": MatchField(("account_id",), column="account_id"),
    },
    "lead": {
        "email": _SEALED,
        "phone": _SEALED,
        **_PERSON,
        "company": MatchField(("company",), fuzzy=True, key="company"),
    },
}


@dataclass(frozen=True, slots=True)
class Condition:
    type: Literal["exact", "fuzzy"]
    field: str
    threshold: float = 1.0

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Condition:
        return cls(raw["type"], raw["field"], float(raw.get("threshold") or 1.0))


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule as matching uses it; ``id`` None for the defaults."""

    id: UUID | None
    name: str
    conditions: tuple[Condition, ...]

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Rule:
        return cls(row["id"], row["name"], tuple(Condition.of(c) for c in row["conditions"]))


def _exact(field: str) -> Condition:
    return Condition("exact", field)


def _similar(field: str, threshold: float = 0.5) -> Condition:
    return Condition("fuzzy", field, threshold)


# What applies to a kind for which the tenant has defined no rule (active or not).
DEFAULT_RULES: Mapping[str, tuple[Rule, ...]] = {
    "account": (
        Rule(None, "Same domain", (_exact("domain"),)),
        Rule(None, "Similar name", (_similar("name"),)),
    ),
    "contact": (
        Rule(None, "Same email", (_exact("email"),)),
        Rule(None, "Same phone", (_exact("phone"),)),
        Rule(
            None, "Similar name at the same account", (_similar("full_name"), _exact("account_id"))
        ),
    ),
    "lead": (
        Rule(None, "Same email", (_exact("email"),)),
        Rule(None, "Same phone", (_exact("phone"),)),
        Rule(None, "Similar name and company", (_similar("full_name"), _similar("company"))),
    ),
}


# -- texts ---------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def trigrams(text: str) -> frozenset[str]:
    """pg_trgm's trigrams: each word lower-cased, padded with two spaces before and one
    after, cut in threes."""
    found: set[str] = set()
    for word in words(text):
        padded = f"  {word} "
        found.update(padded[i : i + 3] for i in range(len(padded) - 2))
    return frozenset(found)


def similarity(a: str, b: str) -> float:
    """pg_trgm's ``similarity(a, b)``: shared trigrams over all trigrams, 0 to 1."""
    ta, tb = trigrams(a), trigrams(b)
    if not ta or not tb:
        return 0.0
    shared = len(ta & tb)
    return shared / (len(ta) + len(tb) - shared)


def normalised(text: str) -> str:
    """Text as an exact comparison sees it: words lower-cased, punctuation and spacing
    ignored ("ACME, Inc." = "acme inc")."""
    return " ".join(words(text))


def text_of(field: MatchField, row: Mapping[str, Any]) -> str | None:
    parts = [str(row[c]) for c in field.columns if row.get(c) is not None]
    text = " ".join(parts).strip()
    return text or None


def match_key(column: Any) -> ColumnElement[Any]:
    """The first three letters or digits of ``column`` (or of a bound value), lower-cased:
    the expression of the indexes of shard revision 0017, constants written as SQL
    literals so the planner recognises it."""
    return func.left(
        func.lower(
            func.regexp_replace(
                column,
                literal_column("'[^[:alnum:]]+'"),
                literal_column("''"),
                literal_column("'g'"),
            )
        ),
        literal_column(str(KEY_LENGTH)),
    )


# -- matching ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Hit:
    rule: Rule
    score: float


def evaluate(
    kind: str,
    rule: Rule,
    record: Mapping[str, Any],
    candidate: Mapping[str, Any],
    indexes: Mapping[str, frozenset[bytes]],
) -> Hit | None:
    """Whether ``candidate`` matches ``record`` under ``rule`` (every condition holds; a
    field without a value matches nothing), and how well: the mean of its conditions'
    scores, 1 for an exact one. ``indexes`` are the record's sealed fields' blind
    indexes under every live key version; the candidate carries ``<field>_bidx``."""
    scores: list[float] = []
    for condition in rule.conditions:
        field = FIELDS[kind][condition.field]
        if field.sealed:
            mine = indexes.get(condition.field) or frozenset()
            theirs = candidate.get(f"{condition.field}_bidx")
            if not mine or theirs is None or bytes(theirs) not in mine:
                return None
            scores.append(1.0)
            continue
        if field.column is not None:
            value = record.get(field.column)
            if value is None or candidate.get(field.column) != value:
                return None
            scores.append(1.0)
            continue
        mine_text, their_text = text_of(field, record), text_of(field, candidate)
        if mine_text is None or their_text is None:
            return None
        if condition.type == "exact":
            if normalised(mine_text) != normalised(their_text) or not normalised(mine_text):
                return None
            scores.append(1.0)
            continue
        score = similarity(mine_text, their_text)
        if score < condition.threshold:
            return None
        scores.append(score)
    return Hit(rule, round(sum(scores) / len(scores), 4)) if scores else None


def ranked(
    kind: str,
    rules: Sequence[Rule],
    record: Mapping[str, Any],
    candidates: Sequence[dict[str, Any]],
    indexes: Mapping[str, frozenset[bytes]],
) -> list[tuple[dict[str, Any], float, list[Hit]]]:
    """Every candidate some rule matches, with its best score and the rules that matched
    (best first), ordered by score (highest first), then id."""
    found = []
    for candidate in candidates:
        hits = [h for rule in rules if (h := evaluate(kind, rule, record, candidate, indexes))]
        if hits:
            hits.sort(key=lambda h: -h.score)
            found.append((candidate, hits[0].score, hits))
    found.sort(key=lambda item: (-item[1], str(item[0]["id"])))
    return found
