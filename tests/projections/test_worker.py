"""The summaries kept by the worker: from activity events, idempotent under redelivery,
dropped with their records, refreshed as time passes, and equal to a rebuild."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx

from meridian.operations import rebuild_projections
from meridian.projections.jobs import apply_event, refresh_tenant
from meridian.settings import Settings
from tests.fixtures.api import Tenant
from tests.fixtures.waiting import eventually
from tests.fixtures.worker import running_worker, stream_events
from tests.projections.helpers import (
    activity,
    ago,
    ahead,
    context_of,
    execute,
    platform_of,
    post,
    runtime_of,
    summary_rows,
)


async def summary(client: httpx.AsyncClient, tenant: Tenant, path: str) -> dict[str, Any]:
    resp = await client.get(f"{path}/interactions", headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def at(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


async def test_activities_update_their_records_summaries(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    account = await post(app_client, tenant, "/v1/accounts", name="Acme")
    contact = await post(
        app_client, tenant, "/v1/contacts", last_name="Lovelace", account_id=account
    )
    opportunity = await post(
        app_client, tenant, "/v1/opportunities", name="Deal", currency="EUR", account_id=account
    )
    c, o, a = (
        f"/v1/contacts/{contact}",
        f"/v1/opportunities/{opportunity}",
        f"/v1/accounts/{account}",
    )
    before = await summary(app_client, tenant, c)
    assert before["computed_at"] is None
    assert before["activities_90d"] == 0
    assert before["record"] == {
        "kind": "contact",
        "id": contact,
        "name": "Lovelace",
        "owner_id": None,
    }

    async with running_worker(settings):
        call_at, note_at = ago(days=2), ago(days=5)
        await activity(app_client, tenant, "call", call_at, contact_id=contact)
        latest = await activity(app_client, tenant, "note", ago(hours=1), contact_id=contact)
        await activity(app_client, tenant, "email", ago(days=40), contact_id=contact)
        await activity(app_client, tenant, "meeting", ago(days=100), contact_id=contact)
        await activity(app_client, tenant, "note", note_at, contact_id=contact)
        later_task_at, soon_task_at = ahead(days=10), ahead(days=3)
        await activity(app_client, tenant, "task", later_task_at, contact_id=contact)
        soon = await activity(app_client, tenant, "task", soon_task_at, contact_id=contact)
        done_task = await activity(
            app_client, tenant, "task", ago(days=1), opportunity_id=opportunity
        )
        deal_task_at = ahead(days=1)
        deal_task = await activity(
            app_client, tenant, "task", deal_task_at, opportunity_id=opportunity
        )

        async def contact_done() -> dict[str, Any] | None:
            body = await summary(app_client, tenant, c)
            return body if body["activities_90d"] == 4 and body["next_task_id"] == soon else None

        mine = await eventually(contact_done, what="the contact's summary")
        assert mine["last_activity_id"] == latest
        assert mine["last_activity_type"] == "note"
        assert mine["activities_30d"] == 3
        assert mine["by_type_30d"] == {"call": 1, "email": 0, "meeting": 0, "note": 2, "task": 0}
        assert mine["by_type_90d"] == {"call": 1, "email": 1, "meeting": 0, "note": 2, "task": 0}
        assert at(mine["next_task_due_at"]) == at(soon_task_at)
        assert mine["computed_at"] is not None

        async def deal_done() -> dict[str, Any] | None:
            body = await summary(app_client, tenant, o)
            return body if body["next_task_id"] == deal_task else None

        deal = await eventually(deal_done, what="the opportunity's summary")
        # A task whose time has passed is an activity that happened, not one to come.
        assert deal["last_activity_id"] == done_task
        assert deal["by_type_30d"]["task"] == 1
        assert deal["activities_90d"] == 1
        assert at(deal["next_task_due_at"]) == at(deal_task_at)

        # The account's are its contacts' and opportunities' (the account is derived).
        async def account_done() -> dict[str, Any] | None:
            body = await summary(app_client, tenant, a)
            return (
                body if body["activities_90d"] == 5 and body["next_task_id"] == deal_task else None
            )

        whole = await eventually(account_done, what="the account's summary")
        assert whole["activities_30d"] == 4
        assert whole["record"]["name"] == "Acme"

        # Deleting the contact deletes its activities: its summary goes, the account's
        # is computed again.
        gone = await app_client.delete(c, headers=tenant.headers)
        assert gone.status_code == 204, gone.text

        async def account_without_contact() -> bool:
            body = await summary(app_client, tenant, a)
            return bool(body["activities_90d"] == 1)

        await eventually(account_without_contact, what="the account's summary recomputed")
        rows = await summary_rows(app_client, tenant)
        assert {(r["record_kind"], str(r["record_id"])) for r in rows} == {
            ("account", account),
            ("opportunity", opportunity),
        }


async def test_a_redelivered_or_late_event_changes_nothing(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    contact = await post(app_client, tenant, "/v1/contacts", last_name="Hopper")
    async with running_worker(settings):
        await activity(app_client, tenant, "call", ago(days=1), contact_id=contact)
        await activity(app_client, tenant, "email", ago(days=2), contact_id=contact)

        async def counted() -> bool:
            rows = await summary_rows(app_client, tenant)
            return bool(rows and rows[0]["activities_30d"] == 2)

        await eventually(counted, what="both activities counted")
    first = await summary_rows(app_client, tenant)
    assert settings.redis_url
    events = [
        e
        for e in await stream_events(settings.redis_url, tenant.id)
        if e["type"] == "activity.created"
    ]
    assert len(events) == 2
    platform = platform_of(app_client)
    tenant_id = uuid.UUID(tenant.id)
    # Each event again, twice, in the other order: the counts stay what they are.
    for event in [*reversed(events), *events]:
        await apply_event(platform, tenant_id, event)
    assert await summary_rows(app_client, tenant) == first
    assert first[0]["activities_30d"] == 2
    assert first[0]["calls_30d"] == 1


async def test_a_rebuild_from_nothing_gives_the_same_rows(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant, settings: Settings
) -> None:
    account = await post(app_client, tenant, "/v1/accounts", name="Initech")
    contacts = [
        await post(app_client, tenant, "/v1/contacts", last_name=f"C{i}", account_id=account)
        for i in range(3)
    ]
    theirs = await post(app_client, other_tenant, "/v1/contacts", last_name="Elsewhere")
    await activity(app_client, other_tenant, "call", ago(days=1), contact_id=theirs)
    async with running_worker(settings):
        for i, contact in enumerate(contacts):
            for j in range(i + 1):
                await activity(
                    app_client, tenant, "meeting", ago(days=10 * j + 1), contact_id=contact
                )
            await activity(app_client, tenant, "task", ahead(days=i + 1), contact_id=contact)

        async def all_counted() -> bool:
            rows = await summary_rows(app_client, tenant)
            return (
                sum(r["activities_90d"] for r in rows if r["record_kind"] == "contact") == 6
                and len(rows) == 4
            )

        await eventually(all_counted, what="every activity counted")
    kept = await summary_rows(app_client, tenant)
    others = await summary_rows(app_client, other_tenant)

    await execute(
        app_client, tenant, "DELETE FROM interaction_summary WHERE tenant_id = :tenant_id"
    )
    assert await summary_rows(app_client, tenant) == []
    result = await rebuild_projections(runtime_of(app_client), tenant.slug)
    assert result["tenants"] == 1
    assert result["rows"] == 4
    assert await summary_rows(app_client, tenant) == kept
    # Rebuilding over existing rows changes nothing either; other tenants are untouched.
    await rebuild_projections(runtime_of(app_client), tenant.id)
    assert await summary_rows(app_client, tenant) == kept
    assert await summary_rows(app_client, other_tenant) == others


async def test_the_refresh_recomputes_rows_whose_time_has_come(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    first = await post(app_client, tenant, "/v1/contacts", last_name="First")
    second = await post(app_client, tenant, "/v1/contacts", last_name="Second")
    due_at = ahead(hours=5)
    for contact in (first, second):
        await activity(app_client, tenant, "call", ago(days=29, hours=23), contact_id=contact)
        await activity(app_client, tenant, "task", due_at, contact_id=contact)
    await rebuild_projections(runtime_of(app_client), tenant.id)
    ctx = await context_of(app_client, tenant)
    async with runtime_of(app_client).router.reader(ctx) as conn:
        row = await conn.fetchrow(
            "SELECT computed_at, refresh_at FROM interaction_summary "
            "WHERE tenant_id = $1 AND record_id = $2",
            ctx.tenant_id,
            uuid.UUID(first),
        )
    assert row is not None
    # Exact until the call leaves the 30-day window (in an hour), before the task is due.
    assert row["refresh_at"] - row["computed_at"] < timedelta(hours=1)
    assert row["refresh_at"] < at(due_at)

    # Both rows made wrong; only the first is due for a refresh.
    await execute(
        app_client,
        tenant,
        "UPDATE interaction_summary SET activities_30d = 99, "
        "refresh_at = CASE WHEN record_id = :first THEN now() - interval '1 minute' "
        "ELSE now() + interval '1 hour' END WHERE tenant_id = :tenant_id",
        first=uuid.UUID(first),
    )
    done = await refresh_tenant(platform_of(app_client), ctx, batch=1)
    assert done == 1
    rows = {str(r["record_id"]): r for r in await summary_rows(app_client, tenant)}
    assert rows[first]["activities_30d"] == 1
    assert rows[second]["activities_30d"] == 99
