"""SQLAlchemy Core statements run on raw asyncpg connections (the hot read path).

Statements are built with SQLAlchemy as everywhere else, compiled once per statement
shape (SQLAlchemy's own cache key, which leaves bound values out) and then executed
with asyncpg directly, skipping the ORM session and result machinery.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import dialect as AsyncpgDialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

_DIALECT = AsyncpgDialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
_CACHE: dict[Any, SQLCompiler] = {}
_CACHE_MAX = 2_000


def compile_statement(stmt: ClauseElement) -> tuple[str, list[Any]]:
    """The asyncpg SQL text and positional arguments of ``stmt``."""
    # The same key SQLAlchemy's own compiled cache uses (bound values left out).
    key = stmt._generate_cache_key()
    compiled: SQLCompiler | None = None
    if key is not None:
        compiled = _CACHE.get(key.key)
    if compiled is None:
        # Compiled against the cache key so later statements of the same shape can
        # reuse it with their own extracted bound values.
        compiled = _DIALECT.statement_compiler(_DIALECT, stmt, cache_key=key)
        if key is not None:
            if len(_CACHE) >= _CACHE_MAX:
                _CACHE.clear()
            _CACHE[key.key] = compiled
    params = compiled.construct_params(
        extracted_parameters=key.bindparams if key is not None else None,
        escape_names=False,
        _no_postcompile=True,
    )
    if compiled.post_compile_params or compiled.literal_execute_params:
        # "Expanding" parameters (IN lists) are rendered per execution, as SQLAlchemy's
        # own execution does; the cached string holds a __[POSTCOMPILE_...] placeholder.
        expanded = compiled._process_parameters_for_postcompile(params)
        names = expanded.positiontup or []
        return expanded.statement, [expanded.parameters[name] for name in names]
    order = compiled.positiontup or []
    return compiled.string, [params[name] for name in order]


def compile_sql(stmt: ClauseElement, param_order: tuple[str, ...]) -> str:
    """SQL text of a statement with named bind parameters, checked to take its
    positional arguments in ``param_order``."""
    compiled = _DIALECT.statement_compiler(_DIALECT, stmt)
    if tuple(compiled.positiontup or ()) != param_order:
        raise ValueError(f"parameters compile as {compiled.positiontup}, not {param_order}")
    return compiled.string


async def fetch(conn: asyncpg.Connection, stmt: ClauseElement) -> list[asyncpg.Record]:
    sql, args = compile_statement(stmt)
    rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
    return rows


async def fetchrow(conn: asyncpg.Connection, stmt: ClauseElement) -> asyncpg.Record | None:
    sql, args = compile_statement(stmt)
    row: asyncpg.Record | None = await conn.fetchrow(sql, *args)
    return row
