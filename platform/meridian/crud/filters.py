"""One filter syntax for every list (``?filter=``): parsed, checked against the fields the
list declares, put in a canonical form (what cursors and cached pages are bound to) and
compiled to a SQLAlchemy criterion that ``endpoints.listing`` adds to its ``where``.

Grammar (whitespace between tokens is ignored)::

    expr   := and(expr,...) | or(expr,...) | not(expr) | term
    term   := field[op]:value        field := [a-z_][a-z0-9_]* | custom.<name>
    op     := eq | ne | gt | gte | lt | lte | in | nin | contains | starts | null

``in``/``nin`` take values separated by ``|``, ``null`` takes ``true``/``false``. A value
is bare (up to the next ``,`` ``)`` or ``|``, trimmed) or quoted with ``"``, inside which
a backslash takes the next character literally. Limits: 4,000 characters, 50 terms,
5 nested combinators, 100 values per ``in``.

Semantics: every term is true or false, never SQL's unknown. ``ne`` and ``nin`` match
rows whose value is NULL (what a reader of ``owner_id[ne]:x`` expects), and ``not(e)``
matches exactly the rows ``e`` does not: negations are pushed down to the terms, each of
which has an explicit complement (``amount[gt]:5`` negated is ``amount <= 5 OR amount IS
NULL``), rather than wrapped in SQL's NOT, under which a NULL would vanish from both
``e`` and ``not(e)``. ``starts`` is a case-sensitive ``LIKE 'prefix%'``, ``contains`` a
case-insensitive ``ILIKE '%text%'``; ``%``, ``_`` and ``\\`` in the value are literal.

Sealed (encrypted) fields can only be found through their blind indexes: ``f[eq]:v`` alone
or as a direct part of the top-level ``and()``. They are returned in ``searched`` for
``endpoints.criteria``, which checks pii:read and binds the cursor to the index rather
than the value; anywhere else they are refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal, TypeAlias
from uuid import UUID

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    ColumnElement,
    Date,
    DateTime,
    Float,
    Integer,
    Numeric,
    String,
    Uuid,
    all_,
    and_,
    any_,
    bindparam,
    false,
    or_,
    true,
)
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.types import TypeEngine

from meridian.errors import ValidationFailed, invalid_field
from tenancy.crypto import NORMALIZERS

PARAMETER = "filter"
MAX_LENGTH = 4000
MAX_TERMS = 50
MAX_DEPTH = 5
MAX_VALUES = 100

# errors[].type of the 422s (errors[].loc is ["filter"], errors[].position the 0-based
# character offset in the parameter's decoded value).
SYNTAX = "filter_syntax"
TOO_COMPLEX = "filter_too_complex"
UNKNOWN_FIELD = "unknown_field"
OPERATOR = "operator_not_allowed"
BAD_VALUE = "invalid_value"
SEALED = "sealed_field"
ERROR_TYPES = frozenset({SYNTAX, TOO_COMPLEX, UNKNOWN_FIELD, OPERATOR, BAD_VALUE, SEALED})

Kind = Literal["uuid", "text", "int", "decimal", "date", "datetime", "bool", "enum"]
OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "contains", "starts", "null")
_LISTS = frozenset({"in", "nin"})
_EQUALITY = ("eq", "ne", "in", "nin")
_ORDERED = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
# What each kind can take (``null`` too where the column is nullable); a field's default.
_KIND_OPS: dict[Kind, tuple[str, ...]] = {
    "uuid": _EQUALITY,
    "text": (*_EQUALITY, "contains", "starts"),
    "int": _ORDERED,
    "decimal": _ORDERED,
    "date": _ORDERED,
    "datetime": _ORDERED,
    "bool": ("eq", "ne"),
    "enum": _EQUALITY,
}
# Values are bound with these types, not the column's: a cast to numeric(18, 2) would
# round 1000.005 into an equality it does not have (and overflow on large values), and
# an int4 parameter would fail on a value beyond 32 bits.
_BIND_TYPES: dict[Kind, TypeEngine[Any]] = {
    "uuid": Uuid(),
    "text": String(),
    "int": BigInteger(),
    "decimal": Numeric(),
    "date": Date(),
    "datetime": DateTime(timezone=True),
    "bool": Boolean(),
    "enum": String(),
}
_COLUMN_TYPES: dict[Kind, tuple[type[TypeEngine[Any]], ...]] = {
    "uuid": (Uuid,),
    "text": (String,),
    "int": (Integer,),
    # Float too: custom fields' numbers are double precision (meridian.crud.custom).
    "decimal": (Numeric, Float),
    "date": (Date,),
    "datetime": (DateTime,),
    "bool": (Boolean,),
    "enum": (String,),
}

_WS = " \t\r\n"
_IDENT = re.compile(r"[a-z_][a-z0-9_]*")
_OPERATOR = re.compile(r"[a-z]+")
_BARE_END = frozenset(',)|"')
_GROUPS: dict[str, Literal["and", "or", "not"]] = {"and": "and", "or": "or", "not": "not"}
_INT = re.compile(r"[+-]?[0-9]{1,19}")
_DECIMAL = re.compile(r"[+-]?[0-9]{1,40}(\.[0-9]{1,40})?")
_INT_RANGE = range(-(2**63), 2**63)
# Stands in the cursor's and the cache's filters for a filter that nothing can match.
_NOTHING = "false()"


@dataclass(frozen=True, slots=True)
class FilterField:
    """A filterable field: its column, the kind of its values and the operators it
    takes (by default all its kind allows; ``null`` only on a nullable column). A sealed
    field has no column: it is searched through its blind index (``sealed_field``)."""

    column: InstrumentedAttribute[Any] | None
    kind: Kind
    ops: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    # Applied to text values before they are compared (e.g. lower-casing a column
    # stored lower-cased).
    normalize: Callable[[str], str] | None = None
    max_length: int | None = None
    # For a value kept in another table (a custom field's, in custom_value): the
    # criterion "the record has a value for which ``predicate`` holds" (``predicate`` on
    # ``column``; ``true()`` for "has a value"). Negations are its complement, so a record
    # without a value matches ne, nin and null:true, as a NULL column does.
    within: Callable[[ColumnElement[bool]], ColumnElement[bool]] | None = None
    nullable: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        allowed: tuple[str, ...]
        if self.column is None:
            nullable, allowed = True, ("eq",)
        else:
            column = self.column.expression
            if not isinstance(column.type, _COLUMN_TYPES[self.kind]):
                raise TypeError(f"{self.column} is not a {self.kind} column")
            nullable = bool(getattr(column, "nullable", True))
            allowed = (*_KIND_OPS[self.kind], "null") if nullable else _KIND_OPS[self.kind]
        if (self.kind == "enum") != bool(self.choices):
            raise TypeError("choices are for (and required by) enum fields")
        ops = self.ops or allowed
        if not set(ops) <= set(allowed):
            raise TypeError(f"{self.kind} field cannot take {sorted(set(ops) - set(allowed))}")
        object.__setattr__(self, "ops", ops)
        object.__setattr__(self, "nullable", nullable)

    @property
    def sealed(self) -> bool:
        return self.column is None

    def describe(self) -> str:
        if self.sealed:
            return "encrypted; eq only, at the top level"
        kind = f"one of {', '.join(self.choices)}" if self.kind == "enum" else self.kind
        return f"{kind}: {', '.join(self.ops)}"


def sealed_field(max_length: int) -> FilterField:
    """A sealed (encrypted) field, found by equality through its blind index; its name in
    the mapping is the field's (``email`` for ``email_enc``/``email_bidx``)."""
    return FilterField(None, "text", max_length=max_length)


# A list's own resolver of ``custom.<name>`` fields; without one they are unknown.
CustomFields: TypeAlias = Callable[[str], FilterField | None]


# -- the syntax tree -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Term:
    """``name[op]:values``. Parsed, ``values`` are the text given; checked, they are the
    canonical text of each value and ``typed`` holds the values themselves."""

    name: str
    op: str
    values: tuple[str, ...]
    at: int = field(default=0, compare=False)
    value_at: tuple[int, ...] = field(default=(), compare=False)
    typed: tuple[Any, ...] = field(default=(), compare=False)
    spec: FilterField | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Group:
    """``and(...)``, ``or(...)`` or ``not(...)`` (one item)."""

    kind: Literal["and", "or", "not"]
    items: tuple[Node, ...]
    at: int = field(default=0, compare=False)


Node: TypeAlias = Term | Group


def _error(message: str, kind: str, at: int | None) -> ValidationFailed:
    where = f" (at character {at})" if at is not None else ""
    return invalid_field(PARAMETER, message + where, kind, position=at)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0
        self.terms = 0

    def fail(self, message: str, at: int | None = None, kind: str = SYNTAX) -> ValidationFailed:
        return _error(message, kind, self.at if at is None else at)

    def skip(self) -> None:
        while self.at < len(self.text) and self.text[self.at] in _WS:
            self.at += 1

    def peek(self) -> str:
        self.skip()
        return self.text[self.at] if self.at < len(self.text) else ""

    def found(self) -> str:
        char = self.peek()
        return repr(char) if char else "the end"

    def expect(self, char: str, after: str) -> None:
        if self.peek() != char:
            raise self.fail(f"expected '{char}' {after}, found {self.found()}")
        self.at += 1

    def parse(self) -> Node:
        node = self.expr(0)
        if self.peek():
            raise self.fail(f"unexpected {self.found()} after a complete filter")
        return node

    def expr(self, depth: int) -> Node:
        self.skip()
        start = self.at
        name = self.name()
        if self.peek() != "(":
            return self.term(name, start)
        kind = _GROUPS.get(name)
        if kind is None:
            raise self.fail(f"unknown combinator {name!r}; use and(), or() or not()", start)
        if depth >= MAX_DEPTH:
            raise self.fail(f"nested deeper than {MAX_DEPTH} levels", start, TOO_COMPLEX)
        self.at += 1
        items = [self.expr(depth + 1)]
        while self.peek() == ",":
            self.at += 1
            items.append(self.expr(depth + 1))
        self.expect(")", f"or ',' in {name}()")
        if kind == "not" and len(items) != 1:
            raise self.fail("not() takes exactly one filter", start)
        return Group(kind, tuple(items), start)

    def name(self) -> str:
        found = _IDENT.match(self.text, self.at)
        if found is None:
            raise self.fail(f"expected a field name, and(, or( or not(, found {self.found()}")
        self.at = found.end()
        if self.text.startswith(".", self.at):
            if found.group() != "custom":
                raise self.fail("only custom fields have a dotted name (custom.<name>)")
            custom = _IDENT.match(self.text, self.at + 1)
            if custom is None:
                raise self.fail("expected a custom field's name after 'custom.'", self.at + 1)
            self.at = custom.end()
            return f"custom.{custom.group()}"
        return found.group()

    def term(self, name: str, start: int) -> Term:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise self.fail(f"more than {MAX_TERMS} terms", start, TOO_COMPLEX)
        self.expect("[", f"and an operator after the field name {name!r}")
        self.skip()
        op_at = self.at
        op = _OPERATOR.match(self.text, self.at)
        if op is None or op.group() not in OPERATORS:
            raise self.fail(f"expected an operator, one of {', '.join(OPERATORS)}", op_at)
        self.at = op.end()
        self.expect("]", "after the operator")
        self.expect(":", "and a value after the operator")
        values, positions = [], []
        while True:
            self.skip()
            positions.append(self.at)
            values.append(self.value())
            if self.peek() != "|":
                break
            if op.group() not in _LISTS:
                raise self.fail("only in and nin take several values; quote a value with |")
            if len(values) == MAX_VALUES:
                raise self.fail(f"more than {MAX_VALUES} values", None, TOO_COMPLEX)
            self.at += 1
        return Term(name, op.group(), tuple(values), start, tuple(positions))

    def value(self) -> str:
        self.skip()
        start = self.at
        text = self.text
        if text.startswith('"', start):
            chars: list[str] = []
            at = start + 1
            while at < len(text) and text[at] != '"':
                if text[at] == "\\":
                    at += 1
                    if at == len(text):
                        break
                chars.append(text[at])
                at += 1
            if at >= len(text):
                raise self.fail("unterminated quoted value", start)
            self.at = at + 1
            return "".join(chars)
        at = start
        while at < len(text) and text[at] not in _BARE_END:
            at += 1
        if at < len(text) and text[at] == '"':
            raise self.fail('a value with " must be quoted whole ("...", \\" inside)', at)
        self.at = at
        bare = text[start:at].rstrip(_WS)
        if not bare:
            raise self.fail('expected a value (an empty one is "")', start)
        return bare


def parse(text: str) -> Node:
    """The syntax tree of a filter; 422 (naming the position) for anything else."""
    if len(text) > MAX_LENGTH:
        raise _error(f"longer than {MAX_LENGTH} characters", TOO_COMPLEX, MAX_LENGTH)
    return _Parser(text).parse()


# -- values ----------------------------------------------------------------------------
def _quoted(value: str) -> str:
    if value and value[0] not in _WS and value[-1] not in _WS and not _BARE_END & set(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(node: Node) -> str:
    """The filter's text, in the form ``parse`` reads back to the same tree."""
    if isinstance(node, Group):
        return f"{node.kind}({','.join(render(item) for item in node.items)})"
    return f"{node.name}[{node.op}]:{'|'.join(_quoted(v) for v in node.values)}"


def _text(value: str) -> str:
    # PostgreSQL text holds neither NUL nor lone surrogates (which UTF-8 cannot encode).
    if "\x00" in value:
        raise ValueError("text cannot contain U+0000")
    value.encode()
    return value


def _decimal(value: str) -> Decimal:
    if _DECIMAL.fullmatch(value) is None:
        raise ValueError
    return Decimal(value)


def _int(value: str) -> int:
    if _INT.fullmatch(value) is None or int(value) not in _INT_RANGE:
        raise ValueError
    return int(value)


def _datetime(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("needs a time zone")
    return moment.astimezone(UTC)


def _boolean(value: str) -> bool:
    if value not in ("true", "false"):
        raise ValueError
    return value == "true"


_PARSERS: dict[Kind, tuple[Callable[[str], Any], str]] = {
    "uuid": (UUID, "a UUID"),
    "text": (_text, "text without U+0000"),
    "int": (_int, "an integer"),
    "decimal": (_decimal, "a decimal number such as 1250.50"),
    "date": (date.fromisoformat, "a date (YYYY-MM-DD)"),
    "datetime": (_datetime, "a date-time with a time zone (2024-05-01T09:30:00Z)"),
    "bool": (_boolean, "true or false"),
    "enum": (_text, "text without U+0000"),
}


def _shown(raw: str) -> str:
    # A value quoted in a message, cut short: the filter can be 4,000 characters long.
    return repr(raw if len(raw) <= 60 else raw[:57] + "...")


def _canonical(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        text = format(value.normalize(), "f")
        return "0" if value == 0 else text
    if isinstance(value, date | datetime):
        return value.isoformat()
    return str(value)


def _typed(term: Term, spec: FilterField, index: int) -> tuple[Any, str]:
    raw = term.values[index]
    at = term.value_at[index] if index < len(term.value_at) else term.at
    if term.op == "null":
        parse_value, expected = _PARSERS["bool"]
    else:
        parse_value, expected = _PARSERS[spec.kind]
    try:
        value = parse_value(raw)
    except (ValueError, TypeError, OverflowError) as exc:
        message = f"{term.name}[{term.op}] takes {expected}, not {_shown(raw)}"
        raise _error(message, BAD_VALUE, at) from exc
    if term.op != "null":
        if spec.kind in ("text", "enum") and spec.normalize is not None:
            value = spec.normalize(value)
        if spec.kind == "enum" and value not in spec.choices:
            message = f"{term.name} is one of {', '.join(spec.choices)}, not {_shown(raw)}"
            raise _error(message, BAD_VALUE, at)
        if spec.max_length is not None and len(value) > spec.max_length:
            message = f"{term.name} is at most {spec.max_length} characters long"
            raise _error(message, BAD_VALUE, at)
    return value, _canonical(value)


def _check(node: Node, fields: Mapping[str, FilterField], custom: CustomFields | None) -> Node:
    if isinstance(node, Group):
        return replace(node, items=tuple(_check(item, fields, custom) for item in node.items))
    spec: FilterField | None
    if node.name.startswith("custom."):
        spec = custom(node.name.removeprefix("custom.")) if custom is not None else None
    else:
        spec = fields.get(node.name)
    if spec is None:
        message = f"unknown field {node.name!r}; filterable fields: {', '.join(sorted(fields))}"
        raise _error(message, UNKNOWN_FIELD, node.at)
    if node.op not in spec.ops:
        if spec.sealed:
            message = f"{node.name} is encrypted: {_SEALED_RULE.format(name=node.name)}"
        else:
            message = (
                f"{node.name} ({spec.kind}) does not take {node.op}; "
                f"its operators: {', '.join(spec.ops)}"
            )
        raise _error(message, OPERATOR, node.at)
    pairs = [_typed(node, spec, i) for i in range(len(node.values))]
    if node.op in _LISTS:
        # A set of values: one order and no repeats, whatever the client sent.
        pairs = sorted({text: (value, text) for value, text in pairs}.values(), key=_second)
    return replace(
        node,
        values=tuple(text for _, text in pairs),
        typed=tuple(value for value, _ in pairs),
        spec=spec,
    )


def _second(pair: tuple[Any, str]) -> str:
    return pair[1]


_SEALED_RULE = (
    "it can be compared only for equality ({name}[eq]:...), alone or directly in the "
    "top-level and()"
)


def normalized(node: Node) -> Node:
    """The same filter in one form: nested and/or flattened, single items unwrapped,
    items sorted and deduplicated, double negations removed (every term is two-valued,
    so not(not(e)) is e)."""
    if isinstance(node, Term):
        return node
    items = [normalized(item) for item in node.items]
    if node.kind == "not":
        (only,) = items
        if isinstance(only, Group) and only.kind == "not":
            return only.items[0]
        return Group("not", (only,), node.at)
    flat: list[Node] = []
    for item in items:
        flat.extend(item.items if isinstance(item, Group) and item.kind == node.kind else [item])
    unique = {render(item): item for item in flat}
    ordered = tuple(unique[key] for key in sorted(unique))
    return ordered[0] if len(ordered) == 1 else Group(node.kind, ordered, node.at)


# -- SQL -------------------------------------------------------------------------------
def _like(text: str) -> str:
    """``text`` with LIKE's wildcards and escape character taken literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _term_sql(term: Term, negate: bool) -> ColumnElement[bool]:
    spec = term.spec
    assert spec is not None, "a checked term"
    if spec.within is not None:
        return _within_sql(term, spec, spec.within, negate)
    column = spec.column
    assert column is not None, "sealed terms are searched, never compiled"
    if term.op == "null":
        return column.is_(None) if term.typed[0] != negate else column.is_not(None)
    # ne and nin are the complements of eq and in.
    op = {"ne": "eq", "nin": "in"}.get(term.op, term.op)
    complement = negate != (term.op in ("ne", "nin"))
    kind = _BIND_TYPES[spec.kind]
    if op == "in":
        values = bindparam(None, list(term.typed), type_=ARRAY(kind))
        if not complement:
            return column == any_(values)
        criterion: ColumnElement[bool] = column != all_(values)
    else:
        value = term.typed[0]
        if op in ("contains", "starts"):
            pattern = f"%{_like(value)}%" if op == "contains" else f"{_like(value)}%"
            param = bindparam(None, pattern, type_=String())
            match = column.ilike if op == "contains" else column.like
            miss = column.not_ilike if op == "contains" else column.not_like
            # No ESCAPE clause: the backslash is already LIKE's escape character in
            # PostgreSQL, and the bare parameter keeps the pattern a plain value.
            if not complement:
                return match(param)
            criterion = miss(param)
        else:
            param = bindparam(None, value, type_=kind)
            ops = _COMPARISONS[op]
            if not complement:
                return ops[0](column, param)
            criterion = ops[1](column, param)
    return or_(criterion, column.is_(None)) if spec.nullable else criterion


def _within_sql(
    term: Term,
    spec: FilterField,
    within: Callable[[ColumnElement[bool]], ColumnElement[bool]],
    negate: bool,
) -> ColumnElement[bool]:
    """A term on a value kept in another table: membership of the records with a value
    matching the positive form of the term, or its complement."""
    if term.op == "null":
        has_value = within(true())
        return ~has_value if term.typed[0] != negate else has_value
    op = {"ne": "eq", "nin": "in"}.get(term.op, term.op)
    positive = replace(term, op=op, spec=replace(spec, within=None))
    member = within(_term_sql(positive, False))
    return ~member if negate != (term.op in ("ne", "nin")) else member


_Compare: TypeAlias = Callable[[Any, Any], ColumnElement[bool]]
# Each comparison and its complement among non-NULL values.
_COMPARISONS: dict[str, tuple[_Compare, _Compare]] = {
    "eq": (lambda c, v: c == v, lambda c, v: c != v),
    "gt": (lambda c, v: c > v, lambda c, v: c <= v),
    "gte": (lambda c, v: c >= v, lambda c, v: c < v),
    "lt": (lambda c, v: c < v, lambda c, v: c >= v),
    "lte": (lambda c, v: c <= v, lambda c, v: c > v),
}


def to_sql(node: Node, negate: bool = False) -> ColumnElement[bool]:
    """The criterion of a checked filter: negations pushed down to the terms (De Morgan),
    each term two-valued, so ``not`` is the exact complement (see the module's doc)."""
    if isinstance(node, Term):
        return _term_sql(node, negate)
    if node.kind == "not":
        return to_sql(node.items[0], not negate)
    items = [to_sql(item, negate) for item in node.items]
    return and_(*items) if (node.kind == "and") != negate else or_(*items)


# -- what a list does with it ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ListFilter:
    """A checked filter, ready for ``endpoints.listing(asked=...)``: ``where`` to add to
    the query, ``searched`` (sealed fields' exact values, compared through their blind
    indexes) and ``filters`` (the cursor and the cache key name the canonical form of
    the part compiled to SQL; ``endpoints.criteria`` names the sealed ones by their
    index token).
    ``canonical`` is the whole filter's, sealed values in clear: for tests and
    diagnostics, never for a cursor, a cache key or a log."""

    where: tuple[ColumnElement[bool], ...] = ()
    searched: Mapping[str, str] = field(default_factory=dict)
    canonical: str | None = None
    key: str | None = None
    # Whether it compares values kept in another table (custom fields): such a filter's
    # selectivity decides the plan, so its page is planned with the values it has.
    elsewhere: bool = False
    # The searched fields whose blind indexes are in another table (a sensitive custom
    # field's, in custom_value): their specs, whose ``within`` and ``normalize`` say how.
    searched_within: Mapping[str, FilterField] = field(default_factory=dict)

    @property
    def filters(self) -> dict[str, str]:
        return {PARAMETER: self.key} if self.key is not None else {}

    def with_searched(self, given: Mapping[str, str | None]) -> ListFilter:
        """This filter ANDed with a list's own exact-match parameters of sealed fields
        (``?email=``): the same value twice is one search, two different values (after
        the blind index's normalisation) match nothing."""
        searched = dict(self.searched)
        empty = False
        for name, value in given.items():
            if value is None:
                continue
            before = searched.setdefault(name, value)
            empty = empty or not _same(name, before, value)
        if not empty:
            return replace(self, searched=searched)
        return replace(self, searched=searched, where=(false(),), key=_NOTHING)


def _same(name: str, a: str, b: str, spec: FilterField | None = None) -> bool:
    normalize = spec.normalize if spec is not None and spec.normalize else None
    normalize = normalize or NORMALIZERS.get(name, str)
    return normalize(a) == normalize(b)


def parse_filter(
    text: str | None,
    fields: Mapping[str, FilterField],
    *,
    custom: CustomFields | None = None,
) -> ListFilter:
    """``?filter=`` checked against a list's ``fields``; every problem is a 422 naming it."""
    if text is None:
        return ListFilter()
    tree = normalized(_check(parse(text), fields, custom))
    top = tree.items if isinstance(tree, Group) and tree.kind == "and" else (tree,)
    searched: dict[str, str] = {}
    within: dict[str, FilterField] = {}
    rest: list[Node] = []
    empty = False
    for item in top:
        if isinstance(item, Term) and item.spec is not None and item.spec.sealed:
            before = searched.setdefault(item.name, item.values[0])
            empty = empty or not _same(item.name, before, item.values[0], item.spec)
            if item.spec.within is not None:
                within[item.name] = item.spec
        else:
            _refuse_sealed(item)
            rest.append(item)
    canonical = render(tree)
    if empty:
        return ListFilter((false(),), searched, canonical, _NOTHING, searched_within=within)
    if not rest:
        return ListFilter((), searched, canonical, None, searched_within=within)
    remainder = rest[0] if len(rest) == 1 else Group("and", tuple(rest))
    return ListFilter(
        (to_sql(remainder),),
        searched,
        canonical,
        render(remainder),
        _elsewhere(remainder),
        within,
    )


def _elsewhere(node: Node) -> bool:
    if isinstance(node, Group):
        return any(_elsewhere(item) for item in node.items)
    return node.spec is not None and node.spec.within is not None


def _refuse_sealed(node: Node) -> None:
    if isinstance(node, Group):
        for item in node.items:
            _refuse_sealed(item)
    elif node.spec is not None and node.spec.sealed:
        message = f"{node.name} is encrypted: {_SEALED_RULE.format(name=node.name)}"
        raise _error(message, SEALED, node.at)


def describe(fields: Mapping[str, FilterField]) -> str:
    """The ``filter`` parameter's documentation for a list with these fields."""
    lines = "\n".join(f"- `{name}` ({fields[name].describe()})" for name in sorted(fields))
    return (
        "A filter expression, ANDed with the other query parameters: terms "
        "`field[op]:value` combined with `and(...)`, `or(...)` and `not(...)`, e.g. "
        '`and(amount[gte]:1000,or(owner_id[eq]:<uuid>,name[starts]:"Acme, Inc"))`.'
        " `in`/`nin` take values separated by `|`; `null` takes `true` or "
        '`false`. Quote a value with `"` to include `,` `)` `|` or `"` (a backslash '
        "escapes inside quotes). `ne`, `nin` and `not()` match rows whose value is null. "
        "`starts` is case-sensitive, `contains` is not. At most "
        f"{MAX_TERMS} terms, {MAX_DEPTH} levels of nesting, {MAX_VALUES} values per `in`. "
        "A problem is 422 with `errors[].position`, the 0-based character offset.\n\n"
        f"Filterable fields:\n{lines}"
    )
