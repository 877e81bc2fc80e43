"""``?filter=`` on the real lists, over a real shard: the rows it returns are exactly those
the expression describes (an oracle in Python, NULLs included), LIKE's wildcards are
literal, cursors are bound to the filter, problems are 422s that name them, record scope
and tenancy still hold, sealed fields go through their blind indexes, and the plans use
the indexes there are."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meridian.accounts.repository import FILTERABLE as ACCOUNT_FIELDS
from meridian.accounts.repository import AccountRepository
from meridian.crud.compiled import compile_statement
from meridian.crud.filters import Group, Node, Term, parse_filter, render
from meridian.crud.pagination import parse_sort
from meridian.opportunities.repository import FILTERABLE as OPPORTUNITY_FIELDS
from meridian.opportunities.repository import SORTABLE, OpportunityRepository
from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.shard_db import superuser
from tests.fixtures.users import PASSWORD, new_user, new_user_id, sign_in
from tests.opportunities.helpers import default_pipeline
from tests.roles.helpers import role_headers

if TYPE_CHECKING:
    from tests.fixtures.databases import TestDatabases

Row = dict[str, Any]


async def ids(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    path: str,
    text: str | None,
    **params: Any,
) -> set[str]:
    query = {"limit": 200, **params, **({"filter": text} if text is not None else {})}
    resp = await client.get(path, params=query, headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["next_cursor"] is None
    return {row["id"] for row in resp.json()["data"]}


async def post(client: httpx.AsyncClient, headers: dict[str, str], path: str, body: Row) -> Row:
    resp = await client.post(path, json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    made: Row = resp.json()
    return made


# -- opportunities: the rows an expression describes ------------------------------------
@dataclass
class Deals:
    rows: list[Row]
    stages: list[str]
    owners: list[str]
    accounts: list[str]


# (name, amount, stage, owner, expected close, account): NULL owners and dates, names
# with LIKE's wildcards and escape character, amounts on either side of 1000.
DEALS = [
    ("Acme, Inc renewal", "1500", 1, 0, "2027-01-10", 0),
    ("Acme expansion", "999.99", 1, 1, None, 0),
    ("100% deal", "1000", 2, None, "2027-03-01", 1),
    ("100x deal", "2500.50", 0, 1, "2026-12-31", 1),
    ("a_b", "0", 2, 0, None, 0),
    ("aXb", "1000.01", 3, None, "2027-06-30", 1),
    ("Globex", "50000", 1, 1, "2027-01-10", 0),
    ("acme lowercase", "10", 0, None, None, 1),
    ("Back\\slash", "1200", 2, 0, "2027-02-01", 0),
]


@pytest.fixture
async def deals(app_client: httpx.AsyncClient, tenant: Tenant) -> Deals:
    h = tenant.headers
    accounts = [(await post(app_client, h, "/v1/accounts", {"name": n}))["id"] for n in "AB"]
    owners = [await new_user_id(app_client, tenant) for _ in range(2)]
    _, stages = await default_pipeline(app_client, tenant)
    rows = []
    for name, amount, stage, owner, close, account in DEALS:
        body = {
            "account_id": accounts[account],
            "name": name,
            "amount": amount,
            "currency": "USD",
            "stage_id": stages[stage],
            "owner_id": owners[owner] if owner is not None else None,
            "expected_close_date": close,
        }
        rows.append(await post(app_client, h, "/v1/opportunities", body))
    return Deals(rows, stages, owners, accounts)


def holds(node: Node, row: Row) -> bool:
    """The meaning of a filter, written plainly: what the SQL must agree with."""
    if isinstance(node, Group):
        if node.kind == "not":
            return not holds(node.items[0], row)
        found = (holds(item, row) for item in node.items)
        return all(found) if node.kind == "and" else any(found)
    value = row[node.name]
    if node.op == "null":
        return (value is None) == (node.values[0] == "true")
    if node.op in ("ne", "nin"):
        return not holds(Term(node.name, {"ne": "eq", "nin": "in"}[node.op], node.values), row)
    if value is None:
        return False

    def convert(raw: Any) -> Any:
        if node.name == "amount":
            return Decimal(raw)
        if node.name == "expected_close_date":
            return date.fromisoformat(raw)
        return str(raw).lower() if node.name.endswith("id") else raw

    have, given = convert(value), [convert(v) for v in node.values]
    if node.op == "eq":
        return bool(have == given[0])
    if node.op == "in":
        return have in given
    if node.op == "contains":
        return given[0].lower() in have.lower()
    if node.op == "starts":
        return bool(have.startswith(given[0]))
    compare = {
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
    }
    return bool(compare[node.op](have, given[0]))


def deal_filters(deals: Deals) -> st.SearchStrategy[Node]:
    other = str(uuid.uuid4())
    pools: dict[str, list[str]] = {
        "amount": ["0", "10", "999.99", "1000", "1000.005", "1200", "2500.5", "50000"],
        "stage_id": [*deals.stages[:4], other],
        "owner_id": [*deals.owners, other],
        "account_id": [*deals.accounts, other],
        "name": ["Acme", "acme", "100%", "100", "a_", "a_b", "aX", "Back\\", "Glo", "deal", "%"],
        "expected_close_date": ["2026-12-31", "2027-01-10", "2027-03-01", "2030-01-01"],
    }

    @st.composite
    def term(draw: st.DrawFn) -> Term:
        name = draw(st.sampled_from(sorted(pools)))
        op = draw(st.sampled_from(OPPORTUNITY_FIELDS[name].ops))
        if op == "null":
            return Term(name, op, (draw(st.sampled_from(["true", "false"])),))
        pool = st.sampled_from(pools[name])
        if op in ("in", "nin"):
            return Term(name, op, tuple(draw(st.lists(pool, min_size=1, max_size=3))))
        return Term(name, op, (draw(pool),))

    def tree(depth: int) -> st.SearchStrategy[Node]:
        if depth == 0:
            return term()
        inner = tree(depth - 1)
        return (
            term()
            | st.builds(
                lambda kind, items: Group(kind, tuple(items)),
                st.sampled_from(["and", "or"]),
                st.lists(inner, min_size=1, max_size=3),
            )
            | st.builds(lambda item: Group("not", (item,)), inner)
        )

    return tree(3)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_any_filter_returns_exactly_the_rows_it_describes(
    app_client: httpx.AsyncClient, tenant: Tenant, deals: Deals, data: st.DataObject
) -> None:
    tree = data.draw(deal_filters(deals))
    expected = {row["id"] for row in deals.rows if holds(tree, row)}
    found = await ids(app_client, tenant.headers, "/v1/opportunities", render(tree))
    assert found == expected, render(tree)


async def test_nested_and_or_not_on_opportunities(
    app_client: httpx.AsyncClient, tenant: Tenant, deals: Deals
) -> None:
    by_name = {row["name"]: row["id"] for row in deals.rows}
    s, (u1, u2) = deals.stages, deals.owners
    path, h = "/v1/opportunities", tenant.headers
    text = (
        f"and(amount[gte]:1000,stage_id[in]:{s[1]}|{s[2]},"
        f'or(owner_id[eq]:{u1},name[starts]:"Acme, Inc"))'
    )
    assert await ids(app_client, h, path, text) == {
        by_name["Acme, Inc renewal"],
        by_name["Back\\slash"],
    }
    # ne matches the rows without an owner too; not() is the exact complement of its filter.
    no_u1 = await ids(app_client, h, path, f"owner_id[ne]:{u1}")
    assert no_u1 == {r["id"] for r in deals.rows if r["owner_id"] != u1}
    assert await ids(app_client, h, path, f"not(owner_id[eq]:{u1})") == no_u1
    assert await ids(app_client, h, path, f"not(or(owner_id[ne]:{u1},amount[lt]:1000))") == {
        by_name["Acme, Inc renewal"],
        by_name["Back\\slash"],
    }
    undated = await ids(app_client, h, path, "expected_close_date[null]:true")
    assert undated == {r["id"] for r in deals.rows if r["expected_close_date"] is None}
    # The list's own parameters still work, ANDed with the filter.
    assert await ids(app_client, h, path, "amount[gte]:1000", owner_id=u2) == {
        by_name["100x deal"],
        by_name["Globex"],
    }
    assert await ids(app_client, h, path, "amount[gte]:1000", close_before="2027-01-31") == {
        by_name["Acme, Inc renewal"],
        by_name["100x deal"],
        by_name["Globex"],
    }


async def test_a_cursor_is_bound_to_its_filter(
    app_client: httpx.AsyncClient, tenant: Tenant, deals: Deals
) -> None:
    path, h = "/v1/opportunities", tenant.headers
    first = await app_client.get(
        path, params={"filter": "amount[gte]:10", "limit": 2, "sort": "amount"}, headers=h
    )
    assert first.status_code == 200, first.text
    cursor = first.json()["next_cursor"]
    assert cursor is not None
    for other in ("amount[gte]:11", "and(amount[gte]:10,name[contains]:a)", None):
        params = {"limit": 2, "sort": "amount", "cursor": cursor}
        if other is not None:
            params["filter"] = other
        assert_problem(await app_client.get(path, params=params, headers=h), 400, "invalid-cursor")
    # The same filter written differently is the same filter (its canonical form).
    same = await app_client.get(
        path,
        params={
            "filter": " amount [ gte ] : 10.00 ",
            "limit": 2,
            "sort": "amount",
            "cursor": cursor,
        },
        headers=h,
    )
    assert same.status_code == 200, same.text
    seen = [r["amount"] for r in first.json()["data"] + same.json()["data"]]
    assert seen == sorted(seen, key=Decimal)


async def test_problems_are_422s_that_name_them(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    async def problem(text: str) -> dict[str, Any]:
        resp = await app_client.get(
            "/v1/opportunities", params={"filter": text}, headers=tenant.headers
        )
        body = assert_problem(resp, 422, "validation")
        (entry,) = body["errors"]
        assert entry["loc"] == ["filter"]
        assert body["detail"] == f"filter: {entry['msg']}"
        return dict(entry)

    unknown = await problem("and(amount[gte]:1,colour[eq]:red)")
    assert (unknown["type"], unknown["position"]) == ("unknown_field", 18)
    assert "unknown field 'colour'; filterable fields: account_id, amount," in unknown["msg"]
    operator = await problem("name[gt]:A")
    assert operator["type"] == "operator_not_allowed"
    assert "name (text) does not take gt; its operators: eq, ne, in, nin" in operator["msg"]
    value = await problem("amount[gte]:lots")
    assert (value["type"], value["position"]) == ("invalid_value", 12)
    assert "takes a decimal number" in value["msg"]
    syntax = await problem("or(amount[gte]:1,amount[lt]5)")
    assert (syntax["type"], syntax["position"]) == ("filter_syntax", 27)
    expected = "expected ':' and a value after the operator, found '5' (at character 27)"
    assert expected in syntax["msg"]
    deep = await problem("not(" * 6 + "amount[gte]:1" + ")" * 6)
    assert deep["type"] == "filter_too_complex"
    too_long = await app_client.get(
        "/v1/opportunities", params={"filter": "x" * 4001}, headers=tenant.headers
    )
    assert_problem(too_long, 422, "validation")


# -- LIKE's wildcards are literal ---------------------------------------------------------
async def test_starts_and_contains_take_wildcards_literally(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    names = ["100% pure", "100 pure", "1000 pure", "a_b", "axb", "A_B", "a\\b", "ab"]
    made = {n: (await post(app_client, h, "/v1/accounts", {"name": n}))["id"] for n in names}

    async def named(text: str) -> set[str]:
        found = await ids(app_client, h, "/v1/accounts", text)
        return {n for n, i in made.items() if i in found}

    assert await named("name[starts]:100%") == {"100% pure"}
    assert await named("name[starts]:a_") == {"a_b"}
    assert await named('name[starts]:"a\\\\"') == {"a\\b"}
    assert await named("name[starts]:%") == set()
    assert await named("name[starts]:A") == {"A_B"}  # case-sensitive
    assert await named("name[contains]:_B") == {"a_b", "A_B"}  # case-insensitive
    assert await named("name[contains]:0%") == {"100% pure"}


# -- record scope and tenancy --------------------------------------------------------------
async def test_a_scoped_user_filters_only_what_they_see(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    rep = await new_user(app_client, tenant, password=PASSWORD)
    peer = await new_user(app_client, tenant, password=PASSWORD)
    rep_headers = await sign_in(user_api, tenant, rep["email"])
    account = (await post(app_client, h, "/v1/accounts", {"name": "Scope"}))["id"]

    async def deal(owner: str | None, amount: str) -> str:
        body = {"account_id": account, "name": "D", "amount": amount, "currency": "EUR"}
        made = await post(app_client, h, "/v1/opportunities", {**body, "owner_id": owner})
        return str(made["id"])

    small, big = await deal(rep["id"], "100"), await deal(rep["id"], "2000")
    await deal(peer["id"], "2000")
    await deal(None, "2000")
    path = "/v1/opportunities"
    for client in (app_client, user_api):
        assert await ids(client, rep_headers, path, "amount[gte]:1000") == {big}
        owners = f"owner_id[in]:{rep['id']}|{peer['id']}"
        assert await ids(client, rep_headers, path, owners) == {small, big}
        others = f"or(owner_id[eq]:{peer['id']},owner_id[null]:true)"
        assert await ids(client, rep_headers, path, others) == set()
        assert await ids(client, rep_headers, path, f"not({others})") == {small, big}
    # The tenant's client sees all four.
    assert len(await ids(app_client, h, path, "amount[gte]:0")) == 4


async def test_another_tenants_ids_match_nothing(
    app_client: httpx.AsyncClient, tenant: Tenant, intruder: Tenant, deals: Deals
) -> None:
    mine = await post(app_client, intruder.headers, "/v1/accounts", {"name": "Intruder"})
    theirs = ",".join(
        [
            f"id[in]:{'|'.join(r['id'] for r in deals.rows)}",
            f"owner_id[in]:{'|'.join(deals.owners)}",
            f"account_id[in]:{'|'.join(deals.accounts)}",
            f"stage_id[in]:{'|'.join(deals.stages)}",
        ]
    )
    for text in theirs.split(","):
        assert await ids(app_client, intruder.headers, "/v1/opportunities", text) == set()
    assert await ids(app_client, intruder.headers, "/v1/opportunities", f"or({theirs})") == set()
    accounts = f"id[in]:{'|'.join(deals.accounts)}|{mine['id']}"
    assert await ids(app_client, intruder.headers, "/v1/accounts", accounts) == {mine["id"]}


# -- sealed fields ----------------------------------------------------------------------------
async def test_email_is_found_through_its_blind_index_with_pii_read(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h, path = tenant.headers, "/v1/contacts"
    jane = await post(app_client, h, path, {"last_name": "Doe", "email": "Jane.Doe@Example.com"})
    await post(app_client, h, path, {"last_name": "Doe", "email": "john@example.com"})
    await post(app_client, h, path, {"last_name": "Roe"})
    assert await ids(app_client, h, path, "email[eq]: jane.doe@example.COM ") == {jane["id"]}
    email = "email[eq]:jane.doe@example.com"
    assert await ids(app_client, h, path, f"and({email},last_name[starts]:D)") == {jane["id"]}
    assert await ids(app_client, h, path, f"and({email},last_name[eq]:Roe)") == set()
    # ANDed with the list's own email parameter: the same address, or nothing.
    same = {"email": "JANE.DOE@example.com"}
    assert await ids(app_client, h, path, "email[eq]:jane.doe@example.com", **same) == {jane["id"]}
    other = {"email": "john@example.com"}
    assert await ids(app_client, h, path, "email[eq]:jane.doe@example.com", **other) == set()

    # Without pii:read, filtering on a sealed field would tell whether a value is on file.
    reader = await role_headers(app_client, tenant, "read_only", scope="crm:read")
    refused = await app_client.get(
        path, params={"filter": "email[eq]:jane.doe@example.com"}, headers=reader
    )
    assert_problem(refused, 403, "forbidden", "pii:read")
    assert await ids(app_client, reader, path, "last_name[eq]:Doe") != set()

    for text, kind in (
        ("or(email[eq]:jane.doe@example.com,last_name[eq]:Roe)", "sealed_field"),
        ("not(email[eq]:jane.doe@example.com)", "sealed_field"),
        ("email[starts]:jane", "operator_not_allowed"),
        ("phone[in]:1|2", "operator_not_allowed"),
    ):
        body = assert_problem(
            await app_client.get(path, params={"filter": text}, headers=h), 422, "validation"
        )
        assert body["errors"][0]["type"] == kind
        assert "can be compared only for equality" in body["detail"]


# -- the other lists ----------------------------------------------------------------------------
async def test_users_and_pipelines_take_filters_too(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    rep = await new_user(app_client, tenant, role="sales_rep")
    manager = await new_user(app_client, tenant, role="sales_manager")
    reps = await ids(app_client, h, "/v1/users", "role[eq]:sales_rep")
    assert rep["id"] in reps
    assert manager["id"] not in reps
    # Stored lower-cased, so compared lower-cased.
    found = await ids(app_client, h, "/v1/users", f"email[eq]:{rep['email'].upper()}")
    assert found == {rep["id"]}
    assert await ids(app_client, h, "/v1/users", "active[eq]:false") == set()

    default = await ids(app_client, h, "/v1/pipelines", "is_default[eq]:true")
    assert len(default) == 1
    assert await ids(app_client, h, "/v1/pipelines", "is_default[ne]:true") == set()


async def test_the_openapi_document_describes_each_lists_filter(
    app_client: httpx.AsyncClient,
) -> None:
    doc = (await app_client.get("/openapi.json")).json()
    for path, names in (
        ("/v1/accounts", ACCOUNT_FIELDS),
        ("/v1/opportunities", OPPORTUNITY_FIELDS),
        ("/v1/contacts", {"email", "last_name"}),
        ("/v1/users", {"role", "active"}),
        ("/v1/pipelines", {"is_default"}),
    ):
        (param,) = [p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == "filter"]
        assert param["schema"]["maxLength"] == 4000
        assert "`field[op]:value`" in param["description"]
        for name in names:
            assert f"- `{name}` (" in param["description"], (path, name)
    contacts = doc["paths"]["/v1/contacts"]["get"]["parameters"]
    (param,) = [p for p in contacts if p["name"] == "filter"]
    assert "- `email` (encrypted; eq only, at the top level)" in param["description"]


# -- the plans -------------------------------------------------------------------------------
async def explain(databases: TestDatabases, tenant: Tenant, sql: str, args: list[Any]) -> str:
    """The plan the API's reads get: a generic one (the read pools force them), planned
    without the values."""
    values = ", ".join(f"'{arg}'" for arg in args)  # uuids, numbers and a word: no quotes
    async with superuser(databases, tenant.shard_id) as conn:
        # Few rows here: without this the planner reads the table whatever the indexes.
        await conn.execute("SET enable_seqscan = off")
        # With few rows known, reading another of the tenant's indexes and sorting 50
        # rows costs as little as the index that gives the order; a real tenant's table
        # makes the sort the dear part, so the plan is checked as it would be then.
        await conn.execute("SET enable_sort = off")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE listed AS {sql}")
        plan = await conn.fetch(f"EXPLAIN EXECUTE listed({values})")
    return "\n".join(row[0] for row in plan)


async def test_amount_and_starts_filters_use_the_indexes(
    databases: TestDatabases, tenant: Tenant
) -> None:
    tenant_id = uuid.UUID(tenant.id)
    amount = parse_filter("amount[gte]:1000", OPPORTUNITY_FIELDS)
    statement = OpportunityRepository.page_statement(
        tenant_id,
        where=amount.where,
        sort=parse_sort("amount", SORTABLE, "amount"),
        limit=50,
        cursor=None,
    )
    plan = await explain(databases, tenant, *compile_statement(statement))
    assert "ix_opportunity_amount" in plan, plan
    assert "Index Cond: ((tenant_id = $1) AND (amount >= $2))" in plan, plan

    starts = parse_filter("name[starts]:Acme", ACCOUNT_FIELDS)
    statement = AccountRepository.page_statement(
        tenant_id,
        where=starts.where,
        sort=parse_sort("name", {"name": AccountRepository.attr("name")}, "name"),
        limit=50,
        cursor=None,
    )
    plan = await explain(databases, tenant, *compile_statement(statement))
    # The (tenant_id, name, id) index serves the tenant and the order, and the prefix is
    # checked on its entries. A LIKE prefix becomes a range of the index only when the
    # planner knows the pattern (a custom plan; the read pools force generic ones) and
    # the column sorts bytewise (the C collation, or a text_pattern_ops index; neither
    # is there): see docs/api.md, "Filtering lists".
    # Which of the tenant's indexes depends on the table's statistics (with few rows
    # known, any of them is as cheap): what holds is that the tenant is an index
    # condition and the table is never scanned whole.
    assert "Index Scan using ix_account_" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert "Index Cond: (tenant_id = $1)" in plan, plan
    assert "Filter: ((name)::text ~~ ($2)::text)" in plan, plan
