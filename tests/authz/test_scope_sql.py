"""The scoped statements compiled once and reused (``TenantRepository.scoped_page_sql``)
say exactly what a freshly built statement says, for every record kind, sort, filter
and cursor; and every subquery of the scope names the tenant (Citus routing)."""

from __future__ import annotations

import itertools
import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from meridian.accounts.repository import SORTABLE as ACCOUNT_SORTS
from meridian.accounts.repository import AccountRepository
from meridian.activities.repository import SORTABLE as ACTIVITY_SORTS
from meridian.activities.repository import ActivityRepository
from meridian.contacts.repository import SORTABLE as CONTACT_SORTS
from meridian.contacts.repository import ContactRepository
from meridian.crud.compiled import compile_statement, is_cached, shape
from meridian.crud.pagination import Cursor, Sort, parse_sort
from meridian.crud.repository import TenantRepository
from meridian.opportunities.repository import SORTABLE as OPPORTUNITY_SORTS
from meridian.opportunities.repository import OpportunityRepository

KINDS: list[tuple[type[TenantRepository[Any]], dict[str, Any]]] = [
    (AccountRepository, ACCOUNT_SORTS),
    (ContactRepository, CONTACT_SORTS),
    (OpportunityRepository, OPPORTUNITY_SORTS),
    (ActivityRepository, ACTIVITY_SORTS),
]


def inline(sql: str, args: list[Any]) -> str:
    """The statement with its arguments written in, so two numberings compare."""
    return re.sub(r"\$(\d+)", lambda m: repr(args[int(m.group(1)) - 1]), sql)


def cursor_for(sort: Sort) -> Cursor:
    value: Any = {"name": "M", "last_name": "M", "amount": Decimal("10.00")}.get(
        sort.name, datetime(2026, 1, 1, tzinfo=UTC)
    )
    return Cursor(sort.token, value, uuid.uuid4(), "digest")


CASES = [
    pytest.param(repo, sorts, token, with_cursor, with_filter, id=f"{repo.__name__}-{token}")
    for (repo, sorts), with_cursor, with_filter in itertools.product(
        KINDS, (False, True), (False, True)
    )
    for token in (*sorts, *(f"-{name}" for name in sorts))
]


@pytest.mark.parametrize(("repo", "sorts", "token", "with_cursor", "with_filter"), CASES)
def test_template_equals_the_statement(
    repo: type[TenantRepository[Any]],
    sorts: dict[str, Any],
    token: str,
    with_cursor: bool,
    with_filter: bool,
) -> None:
    sort = parse_sort(token, sorts, token)
    tenant, viewer = uuid.uuid4(), uuid.uuid4()
    for _ in range(2):  # the second call reuses the compiled template, new values
        where = [repo.attr("owner_id") == uuid.uuid4()] if with_filter else []
        cursor = cursor_for(sort) if with_cursor else None
        fast = repo.scoped_page_sql(tenant, viewer, where=where, sort=sort, limit=25, cursor=cursor)
        built = compile_statement(
            repo.scoped_page_statement(
                tenant, viewer, where=where, sort=sort, limit=25, cursor=cursor
            )
        )
        assert inline(*fast) == inline(*built)
        tenant, viewer = uuid.uuid4(), uuid.uuid4()
    # The shape's template is in the one statement cache (meridian.crud.compiled).
    key = shape(repo.page_statement(tenant, where=where, sort=sort, limit=25, cursor=cursor))
    assert key is not None
    assert is_cached((repo, "scoped-page", key.key))


@pytest.mark.parametrize(("repo", "sorts"), KINDS)
def test_every_subquery_names_the_tenant(
    repo: type[TenantRepository[Any]], sorts: dict[str, Any]
) -> None:
    tenant, viewer = uuid.uuid4(), uuid.uuid4()
    sort = parse_sort(next(iter(sorts)), sorts, "")
    sql, args = repo.scoped_page_sql(tenant, viewer, where=[], sort=sort, limit=10, cursor=None)
    text = inline(sql, args)
    tables = {repo.model.__tablename__, "user_closure", "record_share"}
    segments = text.split("SELECT")[1:]
    read = 0
    for segment in segments:
        found = re.search(r"FROM (\w+)", segment)
        if found is None or found.group(1) not in tables:
            continue  # the outer selects read the CTE and the union, not a table
        read += 1
        table = found.group(1)
        assert f"{table}.tenant_id = {tenant!r}" in segment, segment
    # The record table twice, the closure and (shareable kinds) the shares.
    assert read >= (5 if repo is ActivityRepository else 8)
