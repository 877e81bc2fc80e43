"""The one statement cache: SQLAlchemy Core statements compiled once per shape for raw
asyncpg connections (the hot read paths), skipping the ORM session and result machinery.

A shape is named either by the caller (``prepared(key, build)``: a repository's by-id
reads and scoped pages, whose values are named parameters given per call, so the
statement is built and compiled only on a miss) or by SQLAlchemy's structural cache key
(``compile_statement(stmt)``: a statement built per request, whose bound values are
taken from it in cache-key order). Both live in one bounded LRU. Compilation uses public
SQLAlchemy APIs (``stmt.compile`` and the compiler's ``string``, ``positiontup``,
``bind_names`` and ``binds``; IN lists through ``render_postcompile``, uncached). The
one private call is ``_generate_cache_key`` (in ``shape``), the key SQLAlchemy's own
cache uses, for which SQLAlchemy offers no public spelling.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import BindParameter
from sqlalchemy.dialects.postgresql.asyncpg import dialect as AsyncpgDialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.cache_key import CacheKey
from sqlalchemy.sql.compiler import SQLCompiler

from primitives.localcache import LocalCache

# asyncpg's own parameter style: $1..$n.
_DIALECT = AsyncpgDialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
CACHE_MAX = 2_000


@dataclass(frozen=True, slots=True)
class Compiled:
    """SQL text and where each positional argument ``$n`` comes from.

    ``names[n - 1]`` names ``$n``; its value is given per execution, or is a constant
    the statement itself bound (``fixed``). ``bound`` names the statement's own bound
    parameters in cache-key order, for ``compile_statement`` and scoped pages, which
    take the values of a new statement of the same shape.
    """

    sql: str
    names: tuple[str, ...]
    fixed: Mapping[str, Any]
    bound: tuple[str, ...] = ()

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        """The positional arguments; a parameter without a value is a KeyError."""
        fixed = self.fixed
        return [values[n] if n in values else fixed[n] for n in self.names]

    def args_from(
        self, bindparams: Sequence[BindParameter[Any]], values: Mapping[str, Any] | None = None
    ) -> list[Any]:
        """The arguments of a statement of this shape whose cache key extracted
        ``bindparams``, plus named ``values``."""
        taken = {n: bp.effective_value for n, bp in zip(self.bound, bindparams, strict=True)}
        if values:
            taken.update(values)
        return self.args(taken)


_CACHE: LocalCache[Compiled] = LocalCache(CACHE_MAX)


def _compiler(stmt: ClauseElement, **compile_kwargs: Any) -> SQLCompiler:
    compiled = stmt.compile(dialect=_DIALECT, compile_kwargs=compile_kwargs)
    if not isinstance(compiled, SQLCompiler):
        raise TypeError(f"not a SQL statement: {type(stmt).__name__}")
    return compiled


def _expands(compiled: SQLCompiler) -> bool:
    # IN lists are rendered per execution ("post-compile"): the SQL depends on the values.
    return bool(compiled.post_compile_params or compiled.literal_execute_params)


def compile_template(
    stmt: ClauseElement, bound: Sequence[BindParameter[Any]] = ()
) -> Compiled | None:
    """``stmt`` compiled, its required parameters left to each execution and its other
    bound values kept as constants; None when it cannot be compiled once (an IN list, or
    one of ``bound`` compiled away)."""
    compiled = _compiler(stmt)
    if _expands(compiled):
        return None
    names = tuple(compiled.positiontup or ())
    bound_names: list[str] = []
    for bp in bound:
        name = compiled.bind_names.get(bp)
        if name is None:
            return None
        bound_names.append(name)
    taken = set(bound_names)
    fixed = {
        n: compiled.binds[n].effective_value
        for n in names
        if n not in taken and not compiled.binds[n].required
    }
    return Compiled(compiled.string, names, fixed, tuple(bound_names))


def prepared(key: Hashable, build: Callable[[], ClauseElement]) -> Compiled:
    """The statement ``build`` makes, compiled the first time ``key`` (its shape: the
    caller's name for it) is asked for. Its named parameters without a value are given
    to ``Compiled.args`` per execution."""
    found = _CACHE.get(key)
    if found is None:
        found = compile_template(build())
        if found is None:
            raise ValueError(f"statement {key!r} has no single compiled form")
        _CACHE.set(key, found)
    return found


def prepared_from(
    key: Hashable, build: Callable[[], ClauseElement], bound: Sequence[BindParameter[Any]]
) -> Compiled | None:
    """``prepared`` for a statement that embeds another one's bound values (``bound``,
    in cache-key order); None when the shape cannot be compiled once."""
    found = _CACHE.get(key)
    if found is None:
        found = compile_template(build(), bound)
        if found is None:
            return None
        _CACHE.set(key, found)
    return found


def shape(stmt: ClauseElement) -> CacheKey | None:
    """SQLAlchemy's structural key of ``stmt`` (its ``key``) and the bound values it
    extracted (``bindparams``); None for a statement SQLAlchemy does not cache."""
    return stmt._generate_cache_key()


def compile_statement(stmt: ClauseElement) -> tuple[str, list[Any]]:
    """The asyncpg SQL text and positional arguments of ``stmt``, compiled once per
    shape (SQLAlchemy's cache key: the same structure, bound values left out)."""
    key = shape(stmt)
    if key is not None:
        cache_key = ("statement", key.key)
        found = _CACHE.get(cache_key)
        if found is None:
            found = compile_template(stmt, key.bindparams)
            # Every value must come from the key: one baked into the SQL or left as a
            # constant would be this statement's, wrong for the next of the shape.
            if found is not None and set(found.names) <= set(found.bound):
                _CACHE.set(cache_key, found)
            else:
                found = None
        if found is not None:
            return found.sql, found.args_from(key.bindparams)
    # Not cacheable (an IN list): rendered for these values, as SQLAlchemy's own
    # execution does.
    compiled = _compiler(stmt, render_postcompile=True)
    params = compiled.params
    return compiled.string, [params[name] for name in compiled.positiontup or ()]


def is_cached(key: Hashable) -> bool:
    """Whether the shape ``key`` (a ``prepared`` key) has been compiled."""
    return _CACHE.get(key) is not None


def cache_size() -> int:
    """Shapes currently compiled (for tests and diagnostics)."""
    return len(_CACHE)


async def fetch(conn: asyncpg.Connection, stmt: ClauseElement) -> list[asyncpg.Record]:
    sql, args = compile_statement(stmt)
    rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
    return rows


async def fetchrow(conn: asyncpg.Connection, stmt: ClauseElement) -> asyncpg.Record | None:
    sql, args = compile_statement(stmt)
    row: asyncpg.Record | None = await conn.fetchrow(sql, *args)
    return row
