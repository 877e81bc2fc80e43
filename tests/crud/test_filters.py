"""The filter syntax (meridian.crud.filters) without a database: parsing, checking against
a list's fields, the canonical form, the SQL it compiles to, and that nothing but the
422 ever comes out of it."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Boolean, Date, DateTime, Integer, Numeric, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from meridian.crud.compiled import compile_statement
from meridian.crud.filters import (
    BAD_VALUE,
    ERROR_TYPES,
    MAX_DEPTH,
    MAX_LENGTH,
    MAX_TERMS,
    MAX_VALUES,
    OPERATOR,
    SEALED,
    SYNTAX,
    TOO_COMPLEX,
    UNKNOWN_FIELD,
    FilterField,
    Group,
    ListFilter,
    Node,
    Term,
    describe,
    parse,
    parse_filter,
    render,
    sealed_field,
)
from meridian.errors import ValidationFailed


class _Base(DeclarativeBase):
    pass


class Thing(_Base):
    """A table of every kind of filterable column (never created: SQL is only compiled)."""

    __tablename__ = "filter_thing"
    id: Mapped[UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    note: Mapped[str | None] = mapped_column(String(50))
    owner_id: Mapped[UUID | None]
    count: Mapped[int | None] = mapped_column(Integer)
    amount: Mapped[Decimal] = mapped_column(Numeric(18, 2))
    due: Mapped[date | None] = mapped_column(Date)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    done: Mapped[bool] = mapped_column(Boolean)
    kind: Mapped[str] = mapped_column(String(8))


FIELDS = {
    "id": FilterField(Thing.id, "uuid"),
    "name": FilterField(Thing.name, "text"),
    "note": FilterField(Thing.note, "text", normalize=str.lower),
    "owner_id": FilterField(Thing.owner_id, "uuid"),
    "count": FilterField(Thing.count, "int"),
    "amount": FilterField(Thing.amount, "decimal"),
    "due": FilterField(Thing.due, "date"),
    "at": FilterField(Thing.at, "datetime"),
    "done": FilterField(Thing.done, "bool"),
    "kind": FilterField(Thing.kind, "enum", choices=("open", "won", "lost")),
    "email": sealed_field(max_length=320),
    "phone": sealed_field(max_length=40),
}
U1 = "0199a6d2-0000-7000-8000-000000000001"
U2 = "0199a6d2-0000-7000-8000-000000000002"


def sql_of(found: ListFilter) -> tuple[str, list[Any]]:
    return compile_statement(select(Thing.id).where(*found.where))


def error_of(text: str, fields: dict[str, FilterField] = FIELDS) -> dict[str, Any]:
    with pytest.raises(ValidationFailed) as caught:
        parse_filter(text, fields)
    error = caught.value
    assert error.status_code == 422
    (entry,) = error.extensions["errors"]
    assert entry["loc"] == ["filter"]
    assert entry["type"] in ERROR_TYPES
    assert error.detail == f"filter: {entry['msg']}"
    return dict(entry)


# -- parsing and the canonical form ----------------------------------------------------
def test_the_example_of_the_guide_parses_to_its_tree() -> None:
    text = (
        f'and(amount[gte]:1000,owner_id[in]:{U1}|{U2},or(note[null]:true,name[starts]:"Acme, Inc"))'
    )
    assert parse(text) == Group(
        "and",
        (
            Term("amount", "gte", ("1000",)),
            Term("owner_id", "in", (U1, U2)),
            Group("or", (Term("note", "null", ("true",)), Term("name", "starts", ("Acme, Inc",)))),
        ),
    )


def test_quoted_values_take_anything_with_backslash_escapes() -> None:
    tree = parse(r'name[in]:"a,b"|"x)y"|"p|q"|"say \"hi\""|"back\\slash"|""|" padded "')
    assert tree == Term(
        "name", "in", ("a,b", "x)y", "p|q", 'say "hi"', "back\\slash", "", " padded ")
    )
    # A bare value keeps inner spaces and backslashes, loses the surrounding whitespace.
    assert parse(r"name[eq]:  Acme  Labs\x  ") == Term("name", "eq", (r"Acme  Labs\x",))
    assert parse("name[eq]:f(x") == Term("name", "eq", ("f(x",))


def test_canonical_form_ignores_whitespace_order_case_and_repeats() -> None:
    a = parse_filter(
        f" and ( owner_id [ in ] : {U2.upper()} | {U1} | {U2} ,"
        "  or(amount[gte]:1000.50, count[lt]:+7) , due[eq]:2024-05-01 ) ",
        FIELDS,
    )
    b = parse_filter(
        f"and(or(count[lt]:7,amount[gte]:01000.5),due[eq]:2024-05-01,owner_id[in]:{U1}|{U2})",
        FIELDS,
    )
    assert a.canonical == b.canonical
    assert a.canonical == (
        f"and(due[eq]:2024-05-01,or(amount[gte]:1000.5,count[lt]:7),owner_id[in]:{U1}|{U2})"
    )
    assert a.filters == {"filter": a.canonical}


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("and(name[eq]:x)", "name[eq]:x"),
        (
            "and(name[eq]:x,and(count[eq]:1,or(done[eq]:true)))",
            "and(count[eq]:1,done[eq]:true,name[eq]:x)",
        ),
        ("or(name[eq]:x,name[eq]:x)", "name[eq]:x"),
        ("not(not(name[eq]:x))", "name[eq]:x"),
        ("not(not(not(name[eq]:x)))", "not(name[eq]:x)"),
        ("at[gt]:2024-05-01T12:00:00+02:00", "at[gt]:2024-05-01T10:00:00+00:00"),
        ("at[gt]:2024-05-01T10:00:00Z", "at[gt]:2024-05-01T10:00:00+00:00"),
        ("amount[eq]:-0.00", "amount[eq]:0"),
        ("amount[eq]:12.3400", "amount[eq]:12.34"),
        ("note[eq]:MiXeD", "note[eq]:mixed"),
        ('name[eq]:"plain"', "name[eq]:plain"),
        ('name[eq]:" x"', 'name[eq]:" x"'),
        ("kind[nin]:won|lost|won", "kind[nin]:lost|won"),
        ("due[null]:false", "due[null]:false"),
    ],
)
def test_canonical_forms(given: str, canonical: str) -> None:
    assert parse_filter(given, FIELDS).canonical == canonical
    assert parse_filter(canonical, FIELDS).canonical == canonical


def test_no_filter_is_nothing_to_add() -> None:
    found = parse_filter(None, FIELDS)
    assert found == ListFilter()
    assert (found.where, found.filters, dict(found.searched)) == ((), {}, {})


# -- what is refused, and where --------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "kind", "position", "says"),
    [
        ("", SYNTAX, 0, "expected a field name"),
        ("   ", SYNTAX, 3, "expected a field name"),
        ("amount", SYNTAX, 6, "expected '['"),
        ("amount[gte]", SYNTAX, 11, "expected ':'"),
        ("amount[gte]:", SYNTAX, 12, "expected a value"),
        ("amount[above]:1", SYNTAX, 7, "expected an operator"),
        ("name[eq]:a|b", SYNTAX, 10, "only in and nin take several values"),
        ('name[eq]:"abc', SYNTAX, 9, "unterminated"),
        ('name[eq]:ab"c', SYNTAX, 11, "quoted whole"),
        ("name[eq]:a)", SYNTAX, 10, "unexpected ')'"),
        ("and(name[eq]:a", SYNTAX, 14, "expected ')'"),
        ("and()", SYNTAX, 4, "expected a field name"),
        ("xor(name[eq]:a)", SYNTAX, 0, "unknown combinator 'xor'"),
        ("not(name[eq]:a,name[eq]:b)", SYNTAX, 0, "exactly one"),
        ("Name[eq]:x", SYNTAX, 0, "expected a field name"),
        ("a.b[eq]:x", SYNTAX, 1, "custom.<name>"),
        ("nope[eq]:1", UNKNOWN_FIELD, 0, "unknown field 'nope'; filterable fields: amount, at,"),
        ("or(name[eq]:a,custom.size[eq]:1)", UNKNOWN_FIELD, 14, "custom.size"),
        ("name[gt]:a", OPERATOR, 0, "name (text) does not take gt"),
        ("owner_id[contains]:a", OPERATOR, 0, "its operators: eq, ne, in, nin, null"),
        ("amount[null]:true", OPERATOR, 0, "amount (decimal) does not take null"),
        ("done[in]:true", OPERATOR, 0, "done (bool)"),
        ("email[ne]:a@b.c", OPERATOR, 0, "email is encrypted"),
        ("and(name[eq]:a, amount[gte]: lots)", BAD_VALUE, 29, "takes a decimal number"),
        ("amount[gte]:1e3", BAD_VALUE, 12, "'1e3'"),
        ("amount[gte]:NaN", BAD_VALUE, 12, "decimal"),
        ("count[eq]:9223372036854775808", BAD_VALUE, 10, "an integer"),
        ("count[eq]:1.5", BAD_VALUE, 10, "an integer"),
        (f"owner_id[in]:{U1}|nope", BAD_VALUE, 50, "takes a UUID, not 'nope'"),
        ("due[lt]:2024-13-01", BAD_VALUE, 8, "a date"),
        ("at[gt]:2024-05-01T10:00:00", BAD_VALUE, 7, "with a time zone"),
        ("at[gt]:0001-01-01T00:00:00+01:00", BAD_VALUE, 7, "with a time zone"),
        ("done[eq]:yes", BAD_VALUE, 9, "true or false"),
        ("note[null]:maybe", BAD_VALUE, 11, "true or false"),
        ("kind[eq]:closed", BAD_VALUE, 9, "one of open, won, lost"),
        ('name[eq]:"a\x00b"', BAD_VALUE, 9, "U+0000"),
        ("phone[eq]:" + "1" * 41, BAD_VALUE, 10, "at most 40 characters"),
        ("or(email[eq]:a@b.c,name[eq]:x)", SEALED, 3, "alone or directly in the top-level and()"),
        ("not(email[eq]:a@b.c)", SEALED, 4, "email is encrypted"),
        ("and(name[eq]:x,or(phone[eq]:1,name[eq]:y))", SEALED, 18, "phone"),
    ],
)
def test_every_problem_is_a_422_that_names_it(
    text: str, kind: str, position: int, says: str
) -> None:
    entry = error_of(text)
    assert entry["type"] == kind
    assert entry["position"] == position
    assert says in entry["msg"]
    assert f"(at character {position})" in entry["msg"]


def test_limits() -> None:
    terms = ",".join(f"count[eq]:{i}" for i in range(MAX_TERMS))
    assert parse_filter(f"or({terms})", FIELDS).canonical is not None
    entry = error_of(f"or({terms},count[eq]:99)")
    assert (entry["type"], entry["position"]) == (TOO_COMPLEX, 3 + len(terms) + 1)
    assert f"more than {MAX_TERMS} terms" in entry["msg"]

    deep = "not(" * MAX_DEPTH + "name[eq]:x" + ")" * MAX_DEPTH
    assert parse_filter(deep, FIELDS).canonical in ("name[eq]:x", "not(name[eq]:x)")
    entry = error_of("and(" * (MAX_DEPTH + 1) + "name[eq]:x" + ")" * (MAX_DEPTH + 1))
    assert (entry["type"], entry["position"]) == (TOO_COMPLEX, 4 * MAX_DEPTH)

    values = "|".join(str(i) for i in range(MAX_VALUES))
    assert parse_filter(f"count[in]:{values}", FIELDS).canonical is not None
    entry = error_of(f"count[in]:{values}|100")
    assert (entry["type"], entry["position"]) == (TOO_COMPLEX, len(f"count[in]:{values}"))

    long = "name[eq]:" + "x" * (MAX_LENGTH - 9)
    assert parse_filter(long, FIELDS).canonical == long
    entry = error_of(long + "x")
    assert entry["type"] == TOO_COMPLEX
    assert f"longer than {MAX_LENGTH}" in entry["msg"]


def test_custom_fields_are_the_resolvers_to_name() -> None:
    size = FilterField(Thing.count, "int")
    found = parse_filter(
        "custom.size[gt]:3",
        FIELDS,
        custom=lambda name: size if name == "size" else None,
    )
    sql, args = sql_of(found)
    assert "filter_thing.count > $1::BIGINT" in sql
    assert args == [3]
    with pytest.raises(ValidationFailed):
        parse_filter("custom.other[gt]:3", FIELDS, custom=lambda name: None)


# -- sealed fields ---------------------------------------------------------------------
def test_sealed_equality_at_the_top_level_is_searched_not_compiled() -> None:
    found = parse_filter("and(email[eq]:Jane@Example.com,name[starts]:J)", FIELDS)
    assert dict(found.searched) == {"email": "Jane@Example.com"}
    # The cursor and the cache name the SQL part; listing adds the index, never the value.
    assert found.filters == {"filter": "name[starts]:J"}
    assert "Jane" not in sql_of(found)[0] + str(sql_of(found)[1])

    alone = parse_filter(" email[eq]: jane@example.com ", FIELDS)
    assert (alone.where, alone.filters) == ((), {})
    assert dict(alone.searched) == {"email": "jane@example.com"}


def test_sealed_values_that_cannot_both_hold_match_nothing() -> None:
    # The same address however written (the blind index's normalisation) is one search.
    same = parse_filter("and(email[eq]:jane@example.com,email[eq]:JANE@example.com )", FIELDS)
    assert same.where == ()
    both = parse_filter("and(email[eq]:jane@example.com,email[eq]:john@example.com)", FIELDS)
    assert sql_of(both)[0].endswith("WHERE false")
    assert both.filters == {"filter": "false()"}
    assert set(both.searched) == {"email"}  # still searched: pii:read is still checked


def test_a_lists_own_sealed_parameters_are_anded() -> None:
    found = parse_filter("name[eq]:x", FIELDS)
    merged = found.with_searched({"email": "a@b.c", "phone": None})
    assert dict(merged.searched) == {"email": "a@b.c"}
    assert merged.where == found.where
    again = parse_filter("email[eq]:A@B.C", FIELDS).with_searched({"email": "a@b.c"})
    assert (again.where, dict(again.searched)) == ((), {"email": "A@B.C"})
    other = parse_filter("email[eq]:x@b.c", FIELDS).with_searched({"email": "a@b.c"})
    assert sql_of(other)[0].endswith("WHERE false")


# -- SQL -------------------------------------------------------------------------------
def test_starts_is_an_escaped_like_prefix_and_contains_an_escaped_ilike() -> None:
    sql, args = sql_of(parse_filter(r'name[starts]:"100%_a\\b"', FIELDS))
    assert "filter_thing.name LIKE $1::VARCHAR" in sql
    assert args == ["100\\%\\_a\\\\b%"]
    sql, args = sql_of(parse_filter("note[contains]:50%", FIELDS))
    assert "filter_thing.note ILIKE $1::VARCHAR" in sql
    assert args == ["%50\\%%"]


def test_in_is_one_array_parameter_whatever_its_length() -> None:
    one, args = sql_of(parse_filter(f"owner_id[in]:{U1}", FIELDS))
    two, _ = sql_of(parse_filter(f"owner_id[in]:{U1}|{U2}", FIELDS))
    assert one == two
    assert "filter_thing.owner_id = ANY ($1::UUID[])" in one
    assert args == [[UUID(U1)]]


def test_values_are_bound_unconstrained() -> None:
    # numeric(18, 2) would round 0.005 up; int4 would overflow beyond 32 bits.
    sql, args = sql_of(parse_filter("and(amount[eq]:0.005,count[gt]:4294967296)", FIELDS))
    assert "filter_thing.amount = $1::NUMERIC " in sql + " "
    assert "filter_thing.count > $2::BIGINT" in sql
    assert args == [Decimal("0.005"), 4294967296]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        # ne and nin keep the rows whose value is null; on a NOT NULL column there are none.
        (
            f"owner_id[ne]:{U1}",
            "filter_thing.owner_id != $1::UUID OR filter_thing.owner_id IS NULL",
        ),
        ("name[ne]:x", "filter_thing.name != $1::VARCHAR"),
        (
            f"owner_id[nin]:{U1}",
            "filter_thing.owner_id != ALL ($1::UUID[]) OR filter_thing.owner_id IS NULL",
        ),
        ("note[null]:true", "filter_thing.note IS NULL"),
        ("note[null]:false", "filter_thing.note IS NOT NULL"),
        # not() is the exact complement: pushed down, each term with its own complement.
        ("not(count[gt]:5)", "filter_thing.count <= $1::BIGINT OR filter_thing.count IS NULL"),
        ("not(amount[gt]:5)", "filter_thing.amount <= $1::NUMERIC"),
        (f"not(owner_id[ne]:{U1})", "filter_thing.owner_id = $1::UUID"),
        ("not(note[null]:true)", "filter_thing.note IS NOT NULL"),
        (
            "not(note[starts]:a)",
            "filter_thing.note NOT LIKE $1::VARCHAR OR filter_thing.note IS NULL",
        ),
        (
            "not(and(amount[gte]:1,due[lt]:2024-01-01))",
            "filter_thing.amount < $1::NUMERIC OR filter_thing.due >= $2::DATE "
            "OR filter_thing.due IS NULL",
        ),
        (
            "not(or(done[eq]:true,kind[in]:won|lost))",
            "filter_thing.done != $1::BOOLEAN AND filter_thing.kind != ALL ($2::VARCHAR[])",
        ),
    ],
)
def test_null_semantics(text: str, where: str) -> None:
    sql, _ = sql_of(parse_filter(text, FIELDS))

    def bare(clause: str) -> str:  # SQLAlchemy's grouping parentheses aside
        return clause.replace("(", "").replace(")", "")

    assert bare(sql.split("WHERE ", 1)[1]) == bare(where)


# -- descriptors and documentation -----------------------------------------------------
def test_a_descriptor_must_fit_its_column() -> None:
    with pytest.raises(TypeError, match="not a decimal column"):
        FilterField(Thing.name, "decimal")
    with pytest.raises(TypeError, match="cannot take"):
        FilterField(Thing.owner_id, "uuid", ops=("eq", "starts"))
    with pytest.raises(TypeError, match="cannot take"):
        FilterField(Thing.name, "text", ops=("null",))  # NOT NULL: never null
    with pytest.raises(TypeError, match="choices"):
        FilterField(Thing.kind, "enum")
    assert FilterField(Thing.amount, "decimal", ops=("gte", "lte")).ops == ("gte", "lte")


def test_the_description_names_every_field_and_its_operators() -> None:
    text = describe(FIELDS)
    assert "- `amount` (decimal: eq, ne, gt, gte, lt, lte, in, nin)" in text
    assert "- `kind` (one of open, won, lost: eq, ne, in, nin)" in text
    assert "- `note` (text: eq, ne, in, nin, contains, starts, null)" in text
    assert "- `email` (encrypted; eq only, at the top level)" in text
    assert f"{MAX_TERMS} terms" in text


# -- properties ------------------------------------------------------------------------
NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True) | st.from_regex(
    r"custom\.[a-z_][a-z0-9_]{0,4}", fullmatch=True
)
ANY_TEXT = st.text(max_size=8)


def raw_terms() -> st.SearchStrategy[Term]:
    ops = st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "contains", "starts", "null"])
    single = st.builds(lambda n, o, v: Term(n, o, (v,)), NAMES, ops, ANY_TEXT)
    lists = st.builds(
        lambda n, o, vs: Term(n, o, tuple(vs)),
        NAMES,
        st.sampled_from(["in", "nin"]),
        st.lists(ANY_TEXT, min_size=1, max_size=4),
    )
    return single | lists


def trees(leaves: st.SearchStrategy[Node], depth: int = MAX_DEPTH) -> st.SearchStrategy[Node]:
    if depth == 0:
        return leaves
    inner = trees(leaves, depth - 1)
    groups = st.builds(
        lambda kind, items: Group(kind, tuple(items)),
        st.sampled_from(["and", "or"]),
        st.lists(inner, min_size=1, max_size=3),
    ) | st.builds(lambda item: Group("not", (item,)), inner)
    return leaves | groups


def count_terms(node: Node) -> int:
    return 1 if isinstance(node, Term) else sum(count_terms(i) for i in node.items)


@st.composite
def spaced(draw: st.DrawFn, node: Node) -> str:
    """``node`` written as a client might: whitespace between tokens, values quoted or not."""

    def ws() -> str:
        return draw(st.sampled_from(["", "", " ", "  ", "\t", "\n "]))

    def value(text: str) -> str:
        plain = render(Term("x", "eq", (text,))).removeprefix("x[eq]:")
        if plain.startswith('"') or not draw(st.booleans()):
            return plain
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def write(n: Node) -> str:
        if isinstance(n, Group):
            items = f"{ws()},{ws()}".join(write(i) for i in n.items)
            return f"{n.kind}{ws()}({ws()}{items}{ws()})"
        values = f"{ws()}|{ws()}".join(value(v) for v in n.values)
        return f"{n.name}{ws()}[{ws()}{n.op}{ws()}]{ws()}:{ws()}{values}"

    return ws() + write(node) + ws()


@settings(max_examples=300)
@given(st.data())
def test_any_tree_of_the_grammar_reads_back_from_its_text(data: st.DataObject) -> None:
    tree = data.draw(trees(raw_terms()).filter(lambda t: count_terms(t) <= MAX_TERMS))
    assert parse(render(tree)) == tree
    assert parse(data.draw(spaced(tree))) == tree


def checked_terms() -> st.SearchStrategy[Term]:
    """Terms that pass the checks of FIELDS (sealed fields aside), values as a client
    might write them."""
    datetimes = st.builds(
        lambda moment, hours: moment.replace(tzinfo=timezone(timedelta(hours=hours))),
        # Naive bounds, as hypothesis wants them; the zone is added above.
        st.datetimes(
            min_value=datetime(1900, 1, 1, tzinfo=UTC).replace(tzinfo=None),
            max_value=datetime(2100, 1, 1, tzinfo=UTC).replace(tzinfo=None),
        ),
        st.integers(-12, 14),
    )
    values: dict[str, st.SearchStrategy[str]] = {
        "uuid": st.uuids().map(lambda u: str(u).upper() if u.int % 2 else str(u)),
        "text": st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00")),
        "int": st.integers(-(2**63), 2**63 - 1).map(str),
        "decimal": st.from_regex(r"[+-]?[0-9]{1,12}(\.[0-9]{1,6})?", fullmatch=True),
        "date": st.dates().map(date.isoformat),
        "datetime": datetimes.map(datetime.isoformat),
        "bool": st.sampled_from(["true", "false"]),
        "enum": st.sampled_from(["open", "won", "lost"]),
    }

    @st.composite
    def term(draw: st.DrawFn) -> Term:
        name = draw(st.sampled_from(sorted(n for n, f in FIELDS.items() if not f.sealed)))
        spec = FIELDS[name]
        op = draw(st.sampled_from(spec.ops))
        if op == "null":
            return Term(name, op, (draw(values["bool"]),))
        size = 4 if op in ("in", "nin") else 1
        return Term(name, op, tuple(draw(st.lists(values[spec.kind], min_size=1, max_size=size))))

    return term()


@settings(max_examples=300)
@given(st.data())
def test_a_checked_filter_round_trips_through_its_canonical_form(data: st.DataObject) -> None:
    tree = data.draw(trees(checked_terms()).filter(lambda t: count_terms(t) <= MAX_TERMS))
    found = parse_filter(data.draw(spaced(tree)), FIELDS)
    assert found.canonical is not None
    again = parse_filter(found.canonical, FIELDS)
    assert again.canonical == found.canonical
    assert again.filters == found.filters
    # And it compiles to one statement shape with the same values.
    assert sql_of(again) == sql_of(found)


GRAMMAR_CHARS = 'andortmqeisgcu[]():|",\\ ._0123456789-+TZ'


@st.composite
def mangled(draw: st.DrawFn) -> str:
    """A valid filter with a few characters cut, added or changed."""
    tree = draw(trees(checked_terms(), depth=2).filter(lambda t: count_terms(t) <= MAX_TERMS))
    text = draw(spaced(tree))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 2))
        text = text[:at] + draw(st.text(GRAMMAR_CHARS, max_size=2)) + text[at + cut :]
    return text


@settings(max_examples=500)
@given(st.text(max_size=120) | st.text(GRAMMAR_CHARS, max_size=120) | mangled())
def test_garbage_is_a_422_or_a_filter_never_anything_else(text: str) -> None:
    try:
        found = parse_filter(text, FIELDS)
    except ValidationFailed as exc:
        (entry,) = exc.extensions["errors"]
        assert entry["loc"] == ["filter"]
        assert entry["type"] in ERROR_TYPES
        assert 0 <= entry["position"] <= max(len(text), MAX_LENGTH)
        return
    assert found.canonical is not None
    sql_of(found)


def test_the_clock_of_a_datetime_value_is_utc() -> None:
    found = parse_filter("at[gte]:2024-05-01T09:30:00-04:00", FIELDS)
    assert sql_of(found)[1] == [datetime(2024, 5, 1, 13, 30, tzinfo=UTC)]
