"""Every repository's row type says what its reads return.

Rows are built from the columns a repository reads (``read_columns``) and handed on as
its ``TypedDict``, which is a declaration: mypy checks the code against it, this test
checks it against the tables, so a column added, dropped or retyped without its row
type fails here instead of surfacing as a ``KeyError`` in a handler."""

from __future__ import annotations

import types
import typing
from typing import Any, get_args, get_origin, get_type_hints

import pytest
from sqlalchemy import JSON, Column

import meridian.app  # noqa: F401 - imports every repository, as the app does
from meridian.crud.repository import TenantRepository

REPOSITORIES = sorted(set(TenantRepository._by_kind.values()), key=lambda r: r.__name__)


def _row_type(repo: type[TenantRepository[Any]]) -> type:
    for base in getattr(repo, "__orig_bases__", ()):
        if get_origin(base) is TenantRepository:
            (row,) = get_args(base)
            assert isinstance(row, type), f"{repo.__name__}: {row!r} is not a row type"
            return row
    raise AssertionError(f"{repo.__name__} does not name its row type")


def _accepts(hint: Any, column: Column[Any]) -> bool:
    """Whether ``hint`` is the column's Python type, with ``| None`` exactly when the
    column is nullable."""
    members = get_args(hint) if get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    optional = type(None) in members
    rest = [m for m in members if m is not type(None)]
    if isinstance(column.type, JSON):
        # A JSON document: an object or an array, as the row type says.
        return (
            optional == bool(column.nullable)
            and len(rest) == 1
            and (get_origin(rest[0]) in (dict, list) or rest[0] in (dict, list, object))
        )
    # A TypeDecorator (e.g. Percent) reads as its implementation's type.
    python_type = getattr(column.type, "impl", column.type).python_type
    return optional == bool(column.nullable) and rest == [python_type]


def test_the_app_has_its_repositories() -> None:
    assert len(REPOSITORIES) >= 8


@pytest.mark.parametrize("repo", REPOSITORIES, ids=lambda r: r.__name__)
def test_row_type_matches_the_columns_read(repo: type[TenantRepository[Any]]) -> None:
    row = _row_type(repo)
    read = {c.key: c for c in repo.model.__table__.columns if c.key not in repo.hidden}
    required: frozenset[str] = getattr(row, "__required_keys__")  # noqa: B009
    optional: frozenset[str] = getattr(row, "__optional_keys__")  # noqa: B009
    assert set(required) == set(read), f"{row.__name__} vs the columns {repo.__name__} reads"
    # Keys a repository adds itself (a pipeline's stages) are NotRequired, never columns.
    assert not set(optional) & set(read)
    hints = get_type_hints(row)
    wrong = {k: hints[k] for k, column in read.items() if not _accepts(hints[k], column)}
    assert not wrong, f"{row.__name__}: types differ from the columns for {wrong}"


def test_a_wrong_row_type_is_caught() -> None:
    """The check above can fail: a row type with a missing key or a wrong type."""

    class Columns(typing.TypedDict):
        id: int  # a uuid column

    (repo,) = [r for r in REPOSITORIES if r.__name__ == "AccountRepository"]
    id_column = repo.model.__table__.c.id
    assert not _accepts(get_type_hints(Columns)["id"], id_column)
    assert set(Columns.__required_keys__) != {
        c.key for c in repo.model.__table__.columns if c.key not in repo.hidden
    }
