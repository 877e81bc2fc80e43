"""The Citus colocation rules and the isolation set-up, checked against ``pg_catalog`` of
the plain PostgreSQL shards, so a table that breaks them fails here even where Citus is
not installed (tests/citus runs the schema and the API on a real Citus cluster).

See docs: every table keyed by ``tenant_id``; every PK/UNIQUE/FK/index includes or
leads with it; FORCE RLS with subquery-free policies; no user triggers (Citus disables
them on distributed tables); ``SET LOCAL`` in the enter function; a least-privilege
app role.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg
import pytest

from meridian.models import shard_metadata
from tests.fixtures.databases import APP_ROLE
from tests.fixtures.shard_db import superuser

if TYPE_CHECKING:
    from tests.fixtures.databases import TestDatabases

EXCLUDED = {"alembic_version"}
ENTER_FUNCTIONS = ("meridian_enter_tenant", "meridian_admit_tenant")
_SQL_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


@dataclass(frozen=True)
class TableInfo:
    oid: int
    name: str
    owner: str
    rowsecurity: bool
    forcerowsecurity: bool


@pytest.fixture(params=["us-1", "eu-1"])
async def catalog(
    request: pytest.FixtureRequest, databases: TestDatabases
) -> AsyncIterator[asyncpg.Connection]:
    async with superuser(databases, request.param) as conn:
        yield conn


async def _tables(conn: asyncpg.Connection) -> dict[str, TableInfo]:
    rows = await conn.fetch(
        """
        SELECT c.oid, c.relname, pg_get_userbyid(c.relowner) AS owner,
               c.relrowsecurity, c.relforcerowsecurity
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
        """
    )
    tables = {
        r["relname"]: TableInfo(
            r["oid"], r["relname"], r["owner"], r["relrowsecurity"], r["relforcerowsecurity"]
        )
        for r in rows
        if r["relname"] not in EXCLUDED
    }
    assert tables, "no shard tables found: is the shard migrated?"
    return tables


async def _tenant_attnums(conn: asyncpg.Connection) -> dict[int, int]:
    """table oid -> attnum of its tenant_id column."""
    rows = await conn.fetch(
        """
        SELECT a.attrelid, a.attnum
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND a.attname = 'tenant_id' AND NOT a.attisdropped
        """
    )
    return {r["attrelid"]: r["attnum"] for r in rows}


async def test_catalog_matches_the_shard_models(catalog: asyncpg.Connection) -> None:
    tables = await _tables(catalog)
    assert set(tables) == set(shard_metadata.tables)


async def test_every_table_has_a_not_null_uuid_tenant_id(catalog: asyncpg.Connection) -> None:
    tables = await _tables(catalog)
    rows = await catalog.fetch(
        """
        SELECT c.relname, a.attnotnull, format_type(a.atttypid, a.atttypmod) AS type
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attribute a
                 ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
        """
    )
    found = {r["relname"]: r for r in rows if r["relname"] in tables}
    assert set(found) == set(tables)
    for name, row in found.items():
        assert row["type"] == "uuid", f"{name}: tenant_id missing or not uuid ({row['type']})"
        assert row["attnotnull"], f"{name}: tenant_id is nullable"


async def test_primary_and_unique_constraints_include_tenant_id(
    catalog: asyncpg.Connection,
) -> None:
    tables = await _tables(catalog)
    tenant_col = await _tenant_attnums(catalog)
    rows = await catalog.fetch(
        """
        SELECT con.conname, con.contype::text AS contype, con.conrelid, con.conkey, c.relname
          FROM pg_constraint con
          JOIN pg_class c ON c.oid = con.conrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND con.contype IN ('p', 'u', 'x')
        """
    )
    checked = [r for r in rows if r["relname"] in tables]
    primary = {r["relname"] for r in checked if r["contype"] == "p"}
    assert primary == set(tables), f"tables without a primary key: {set(tables) - primary}"
    for r in checked:
        assert tenant_col[r["conrelid"]] in r["conkey"], (
            f"{r['relname']}.{r['conname']} ({r['contype']}) does not include tenant_id"
        )


async def test_unique_indexes_include_tenant_id(catalog: asyncpg.Connection) -> None:
    tables = await _tables(catalog)
    tenant_col = await _tenant_attnums(catalog)
    rows = await catalog.fetch(
        """
        SELECT ic.relname AS index, c.relname AS table, i.indrelid,
               i.indkey::int2[] AS keys, i.indnkeyatts
          FROM pg_index i
          JOIN pg_class ic ON ic.oid = i.indexrelid
          JOIN pg_class c ON c.oid = i.indrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND i.indisunique
        """
    )
    checked = [r for r in rows if r["table"] in tables]
    assert checked
    for r in checked:
        keys = list(r["keys"])[: r["indnkeyatts"]]
        assert tenant_col[r["indrelid"]] in keys, f"unique index {r['index']} lacks tenant_id"


async def test_foreign_keys_include_tenant_id_on_both_sides(catalog: asyncpg.Connection) -> None:
    tables = await _tables(catalog)
    tenant_col = await _tenant_attnums(catalog)
    rows = await catalog.fetch(
        """
        SELECT con.conname, c.relname, con.conrelid, con.conkey, con.confrelid, con.confkey,
               rc.relname AS referred
          FROM pg_constraint con
          JOIN pg_class c ON c.oid = con.conrelid
          JOIN pg_class rc ON rc.oid = con.confrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND con.contype = 'f'
        """
    )
    checked = [r for r in rows if r["relname"] in tables]
    assert checked, "expected composite foreign keys between shard tables"
    for r in checked:
        assert r["referred"] in tables, f"{r['conname']} refers outside the shard tables"
        local = tenant_col[r["conrelid"]]
        remote = tenant_col[r["confrelid"]]
        pairs = list(zip(r["conkey"], r["confkey"], strict=True))
        assert (local, remote) in pairs, (
            f"{r['relname']}.{r['conname']} does not map tenant_id to {r['referred']}.tenant_id"
        )


async def test_every_index_leads_with_tenant_id(catalog: asyncpg.Connection) -> None:
    tables = await _tables(catalog)
    tenant_col = await _tenant_attnums(catalog)
    rows = await catalog.fetch(
        """
        SELECT ic.relname AS index, c.relname AS table, i.indrelid, i.indkey::int2[] AS keys
          FROM pg_index i
          JOIN pg_class ic ON ic.oid = i.indexrelid
          JOIN pg_class c ON c.oid = i.indrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public'
        """
    )
    checked = [r for r in rows if r["table"] in tables]
    assert {r["table"] for r in checked} == set(tables)
    for r in checked:
        # An expression as the first key shows up as attnum 0 and fails here, as it should.
        assert r["keys"][0] == tenant_col[r["indrelid"]], (
            f"index {r['index']} on {r['table']} does not lead with tenant_id"
        )


async def test_row_level_security_is_enabled_and_forced(catalog: asyncpg.Connection) -> None:
    for table in (await _tables(catalog)).values():
        assert table.rowsecurity, f"{table.name}: RLS not enabled"
        assert table.forcerowsecurity, f"{table.name}: RLS not forced (the owner bypasses it)"


async def test_policies_are_tenant_equalities_without_subqueries(
    catalog: asyncpg.Connection,
) -> None:
    tables = await _tables(catalog)
    rows = await catalog.fetch(
        """
        SELECT p.tablename, p.policyname, p.cmd, p.permissive, p.qual, p.with_check,
               pol.polqual::text AS qual_tree, pol.polwithcheck::text AS check_tree
          FROM pg_policies p
          JOIN pg_class c ON c.relname = p.tablename
          JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = p.schemaname
          JOIN pg_policy pol ON pol.polrelid = c.oid AND pol.polname = p.policyname
         WHERE p.schemaname = 'public'
        """
    )
    with_policy = {r["tablename"] for r in rows}
    assert with_policy >= set(tables), f"tables without a policy: {set(tables) - with_policy}"
    for r in rows:
        where = f"{r['tablename']}.{r['policyname']}"
        for expr, tree in ((r["qual"], r["qual_tree"]), (r["with_check"], r["check_tree"])):
            # Every policy (permissive ones are OR-ed together) must be the tenant equality.
            assert expr is not None, f"{where}: missing USING or WITH CHECK"
            assert "SELECT" not in expr.upper(), f"{where}: subquery in policy: {expr}"
            assert "SUBLINK" not in (tree or "").upper(), f"{where}: SubLink in policy"
            assert "tenant_id" in expr, f"{where}: policy does not compare tenant_id"
            assert "current_setting('app.tenant_id'" in expr, f"{where}: {expr}"
        assert r["cmd"] == "ALL", f"{where}: policy covers {r['cmd']} only"


async def test_no_user_triggers_on_shard_tables(catalog: asyncpg.Connection) -> None:
    rows = await catalog.fetch(
        """
        SELECT t.tgname, c.relname
          FROM pg_trigger t
          JOIN pg_class c ON c.oid = t.tgrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND NOT t.tgisinternal
        """
    )
    assert [(r["relname"], r["tgname"]) for r in rows] == []


@pytest.mark.parametrize("function", ENTER_FUNCTIONS)
async def test_tenant_functions_use_set_local(catalog: asyncpg.Connection, function: str) -> None:
    rows = await catalog.fetch(
        """
        SELECT p.prosrc, p.prosecdef, p.proconfig, pg_get_userbyid(p.proowner) AS owner,
               ARRAY(SELECT a.grantee::regrole::text FROM aclexplode(p.proacl) a
                      WHERE a.grantee <> 0 AND a.privilege_type = 'EXECUTE') AS grantees,
               EXISTS(SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0)
                   AS public_grant
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public' AND p.proname = $1
        """,
        function,
    )
    assert len(rows) == 1, f"expected exactly one {function}()"
    fn = rows[0]
    source = _SQL_COMMENT.sub("", fn["prosrc"])  # a comment may name set_config
    assert "SET LOCAL app.tenant_id" in source
    assert "set_config" not in source.lower(), "set_config is not propagated by Citus"
    assert fn["prosecdef"], "must be SECURITY DEFINER (the app role cannot read residency)"
    assert any(c.startswith("search_path=") for c in fn["proconfig"] or []), (
        "a SECURITY DEFINER function must pin its search_path"
    )
    assert fn["owner"] != APP_ROLE
    assert not fn["public_grant"], "EXECUTE must not be granted to PUBLIC"
    assert APP_ROLE in fn["grantees"]


async def test_app_role_is_unprivileged(catalog: asyncpg.Connection) -> None:
    role = await catalog.fetchrow(
        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles "
        "WHERE rolname = $1",
        APP_ROLE,
    )
    assert role is not None
    assert not role["rolsuper"]
    assert not role["rolbypassrls"]
    assert not role["rolcreaterole"]
    assert not role["rolcreatedb"]
    assert not await catalog.fetchval(
        "SELECT has_schema_privilege($1, 'public', 'CREATE')", APP_ROLE
    )


async def test_app_role_owns_nothing(catalog: asyncpg.Connection) -> None:
    owned = await catalog.fetch(
        """
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) = $1
        UNION ALL
        SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public' AND pg_get_userbyid(p.proowner) = $1
        """,
        APP_ROLE,
    )
    assert [r[0] for r in owned] == []
    # Membership in an owner's role would carry the owner's rights (ALTER TABLE ... NO FORCE).
    for table in (await _tables(catalog)).values():
        assert table.owner != APP_ROLE
        assert not await catalog.fetchval(
            "SELECT pg_has_role($1, $2, 'MEMBER')", APP_ROLE, table.owner
        ), f"{APP_ROLE} is a member of {table.owner}, which owns {table.name}"


async def test_app_role_cannot_change_keys_or_bypass_rls(catalog: asyncpg.Connection) -> None:
    tables = await _tables(catalog)
    for name in tables:
        for column in ("tenant_id", "id"):
            has_column = await catalog.fetchval(
                "SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass AND attname = $2 "
                "AND NOT attisdropped",
                name,
                column,
            )
            if not has_column:
                continue
            assert not await catalog.fetchval(
                "SELECT has_column_privilege($1, $2, $3, 'UPDATE')", APP_ROLE, name, column
            ), f"{APP_ROLE} may UPDATE {name}.{column}"
        # TRUNCATE ignores RLS; TRIGGER/REFERENCES are owner-level tools.
        for privilege in ("TRUNCATE", "TRIGGER", "REFERENCES"):
            assert not await catalog.fetchval(
                "SELECT has_table_privilege($1, $2, $3)", APP_ROLE, name, privilege
            ), f"{APP_ROLE} has {privilege} on {name}"
    # Residency (the move fence) changes only through the SECURITY DEFINER functions.
    for privilege in ("INSERT", "UPDATE", "DELETE"):
        assert not await catalog.fetchval(
            "SELECT has_table_privilege($1, 'tenant_residency', $2)", APP_ROLE, privilege
        ), f"{APP_ROLE} may {privilege} tenant_residency"
