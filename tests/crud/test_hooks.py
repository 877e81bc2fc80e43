"""The kit's on-write callbacks: registered by name, run in order, inside the
transaction of the write (so what another domain keeps about the record, such as its
shares, goes with it or stays with it)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from meridian.crud import hooks
from meridian.errors import Conflict
from tenancy.context import TenantContext, TenantStatus
from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.shard_db import superuser
from tests.fixtures.users import new_user

if TYPE_CHECKING:
    # Not at run time: pytest would try to collect the Test* class.
    from tests.fixtures.databases import TestDatabases

Seen = list[tuple[str, str, uuid.UUID]]


def recorder(name: str, seen: Seen) -> hooks.OnWrite:
    async def callback(
        session: AsyncSession, tenant: TenantContext, written: hooks.Written
    ) -> None:
        seen.append((name, written.kind, written.record_id))

    return callback


async def test_callbacks_run_in_registration_order_and_a_name_registers_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hooks, "_ON_WRITE", {})
    seen: Seen = []
    hooks.on_write("first", recorder("first", seen))
    hooks.on_write("second", recorder("second", seen))
    # Registering a name again (a module imported twice) replaces it, in its place.
    hooks.on_write("first", recorder("first again", seen))
    assert hooks.names() == ("first", "second")
    record_id = uuid.uuid4()
    tenant = TenantContext(uuid.uuid4(), "t", "us-1", "us", TenantStatus.ACTIVE, 1)
    written = hooks.Written("contact", "deleted", {"id": record_id})
    await hooks.record_written(None, tenant, written)  # type: ignore[arg-type]
    assert seen == [("first again", "contact", record_id), ("second", "contact", record_id)]


def test_the_app_registers_the_domains_callbacks(app_client: httpx.AsyncClient) -> None:
    # The app imports every domain; sharing's callback forgets a deleted record's shares,
    # leads' scores a lead again when an activity is logged on it.
    assert {"sharing", "leads.score-on-activity"} <= set(hooks.names())


async def _shares_of(databases: TestDatabases, tenant: Tenant, record_id: str) -> int:
    async with superuser(databases, tenant.shard_id) as conn:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM record_share WHERE tenant_id = $1 AND record_id = $2",
            uuid.UUID(tenant.id),
            uuid.UUID(record_id),
        )
    return count


async def test_callbacks_run_in_the_transaction_of_the_delete(
    app_client: httpx.AsyncClient,
    tenant: Tenant,
    databases: TestDatabases,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grantee = (await new_user(app_client, tenant))["id"]
    made = await app_client.post("/v1/contacts", json={"last_name": "H"}, headers=tenant.headers)
    assert made.status_code == 201, made.text
    contact = made.json()["id"]
    shared = await app_client.post(
        f"/v1/contacts/{contact}/shares", json={"user_id": grantee}, headers=tenant.headers
    )
    assert shared.status_code == 201, shared.text

    seen: list[tuple[int, int]] = []

    async def refuse(session: AsyncSession, context: TenantContext, written: hooks.Written) -> None:
        if written.action != "deleted":
            return
        # Runs after sharing's callback, in the same session: the row and its shares
        # are already gone there, though nothing is committed yet.
        params = {"tenant": context.tenant_id, "id": written.record_id}
        rows = await session.scalar(
            text("SELECT count(*) FROM contact WHERE tenant_id = :tenant AND id = :id"), params
        )
        shares = await session.scalar(
            text("SELECT count(*) FROM record_share WHERE tenant_id = :tenant AND record_id = :id"),
            params,
        )
        seen.append((int(rows or 0), int(shares or 0)))
        raise Conflict("Refused by a test callback.")

    monkeypatch.setitem(hooks._ON_WRITE, "test-refuse", refuse)
    assert hooks.names()[-1] == "test-refuse"

    refused = await app_client.delete(f"/v1/contacts/{contact}", headers=tenant.headers)
    assert_problem(refused, 409, "conflict")
    assert seen == [(0, 0)]
    # The failed callback rolled the whole deletion back: the record and its share.
    kept = await app_client.get(f"/v1/contacts/{contact}", headers=tenant.headers)
    assert kept.status_code == 200, kept.text
    assert await _shares_of(databases, tenant, contact) == 1

    monkeypatch.delitem(hooks._ON_WRITE, "test-refuse")
    gone = await app_client.delete(f"/v1/contacts/{contact}", headers=tenant.headers)
    assert gone.status_code == 204, gone.text
    assert await _shares_of(databases, tenant, contact) == 0
