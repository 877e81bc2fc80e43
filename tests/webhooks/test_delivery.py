"""Deliveries with a real worker and real receivers: signed so that Standard Webhooks
verifies them, retried until delivered, dead after the retry window and retried by hand,
replayed, a failing subscription disabled (and the tenant told), tenants kept apart, and
a worker stopped half-way losing nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError

from meridian.settings import Settings
from meridian.worker.main import serve_metrics
from tests.fixtures.api import Tenant
from tests.fixtures.databases import names_for, raw_dsn
from tests.fixtures.problems import assert_problem
from tests.fixtures.receivers import Receiver, receiver
from tests.fixtures.redis_servers import free_port
from tests.fixtures.response_models import ResponseChecker
from tests.fixtures.waiting import eventually
from tests.fixtures.worker import running_worker
from tests.webhooks.conftest import contact, events_of, subscribe

# Retries in fractions of a second, and a dead consumer's events taken over after 1 s.
FAST: dict[str, Any] = {
    "webhook_retry_base": 0.2,
    "webhook_retry_cap": 0.5,
    "event_claim_idle": 1.0,
}


async def deliveries(
    client: httpx.AsyncClient, tenant: Tenant, webhook_id: str, **params: Any
) -> list[dict[str, Any]]:
    resp = await client.get(
        f"/v1/webhooks/{webhook_id}/deliveries",
        params={"limit": 200, **params},
        headers=tenant.headers,
    )
    assert resp.status_code == 200, resp.text
    found: list[dict[str, Any]] = resp.json()["data"]
    return found


def ids_received(rx: Receiver) -> list[str]:
    return [r.headers["webhook-id"] for r in rx.requests]


async def test_a_delivery_is_signed_and_verifies(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    async with receiver() as rx, running_worker(settings, **FAST):
        made = await subscribe(app_client, tenant, f"{rx.url}/hook", "contact.created")
        created = await contact(app_client, tenant, last_name="Turing", email="alan@example.com")
        await eventually(lambda: rx.requests, what="a delivery")
        got = rx.requests[0]
        assert got.method == "POST"
        assert got.path == "/hook"
        assert got.headers["content-type"] == "application/json"
        payload = Verifier(made["secret"]).verify(got.body, got.headers)
        with pytest.raises(WebhookVerificationError):
            Verifier(made["secret"]).verify(got.body.replace(b"Turing", b"Tuning"), got.headers)
        other = (await subscribe(app_client, tenant, f"{rx.url}/other", "account.*"))["secret"]
        with pytest.raises(WebhookVerificationError):
            Verifier(other).verify(got.body, got.headers)

        # The event as /v1/events shows it; its id is the webhook-id receivers dedupe by.
        assert payload["type"] == "contact.created"
        assert payload["record"]["id"] == created["id"]
        assert got.headers["webhook-id"] == payload["id"]
        (logged,) = [e for e in await events_of(app_client, tenant) if e["id"] == payload["id"]]
        assert payload == logged
        assert "alan@example.com" not in got.body.decode()

        async def delivered() -> list[dict[str, Any]]:
            return await deliveries(app_client, tenant, made["id"], status="delivered")

        (row,) = await eventually(delivered, what="the delivery recorded")
    assert row["event_id"] == payload["id"]
    assert row["event_type"] == "contact.created"
    assert row["attempts"] == 1
    assert row["last_status_code"] == 200
    assert row["response_excerpt"] == '{"ok": true}'
    assert row["next_attempt_at"] is None
    one = await app_client.get(
        f"/v1/webhooks/{made['id']}/deliveries/{row['id']}", headers=tenant.headers
    )
    assert one.status_code == 200
    assert one.json() == row
    # This operation answers with success only once a worker delivered: its response is
    # held to the declared model here (tests/web/test_response_models.py exempts it).
    assert ResponseChecker(app_client.app).check(one) == []  # type: ignore[attr-defined]
    assert len(rx.requests) == 1


async def test_failures_are_retried_until_delivered(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    async with receiver() as rx, running_worker(settings, **{**FAST, "webhook_retry_base": 1.0}):
        rx.fail_next(2, 503)
        made = await subscribe(app_client, tenant, rx.url, "contact.created")
        await contact(app_client, tenant)

        async def failed() -> list[dict[str, Any]]:
            return await deliveries(app_client, tenant, made["id"], status="failed")

        (row,) = await eventually(failed, what="a failed attempt recorded")
        assert row["last_status_code"] == 503
        assert row["last_error"] == "HTTP 503"
        assert row["response_excerpt"] == '{"ok": true}'
        assert row["next_attempt_at"] is not None

        async def delivered() -> list[dict[str, Any]]:
            return await deliveries(app_client, tenant, made["id"], status="delivered")

        (row,) = await eventually(delivered, what="the delivery after two failures")
    assert row["attempts"] == 3
    assert row["last_status_code"] == 200
    assert row["last_error"] is None
    assert len(set(ids_received(rx))) == 1
    assert len(rx.requests) == 3
    for got in rx.requests:  # each attempt signed afresh
        Verifier(made["secret"]).verify(got.body, got.headers)


async def test_dead_after_the_window_then_retried_by_hand(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    window = {**FAST, "webhook_retry_window": 1.5, "webhook_disable_after": 100}
    async with receiver() as rx, running_worker(settings, **window) as worker:
        port = free_port()
        metrics = await serve_metrics(worker.context.runtime, port, host="127.0.0.1")
        rx.status = 500
        made = await subscribe(app_client, tenant, rx.url, "contact.created")
        await contact(app_client, tenant)

        async def dead() -> list[dict[str, Any]]:
            return await deliveries(app_client, tenant, made["id"], status="dead")

        (row,) = await eventually(dead, what="the delivery dead")
        # The worker's /metrics counts the dead letter (the alert's signal).
        async with httpx.AsyncClient() as http:
            scraped = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        await metrics.cleanup()
        dead_letters = {
            s.labels["reason"]: s.value
            for f in text_string_to_metric_families(scraped)
            for s in f.samples
            if s.name == "meridian_webhook_dead_letters_total"
        }
        # At least this one (a delivery of an earlier test may have died here too).
        assert dead_letters.get("expired", 0) >= 1, scraped
        assert row["attempts"] >= 2
        assert row["next_attempt_at"] is None
        assert row["last_status_code"] == 500
        assert row["last_error"] == "HTTP 500"
        attempts = len(rx.requests)
        assert attempts == row["attempts"]
        assert await deliveries(app_client, tenant, made["id"], status="pending") == []

        rx.status = 200
        path = f"/v1/webhooks/{made['id']}/deliveries/{row['id']}/retry"
        resp = await app_client.post(path, headers=tenant.headers)
        assert resp.status_code == 202, resp.text
        assert resp.json()["status"] == "pending"
        assert ResponseChecker(app_client.app).check(resp) == []  # type: ignore[attr-defined]

        async def delivered() -> list[dict[str, Any]]:
            return await deliveries(app_client, tenant, made["id"], status="delivered")

        (row,) = await eventually(delivered, what="the retried delivery")
        assert row["attempts"] == attempts + 1
        assert len(rx.requests) == attempts + 1
        assert_problem(await app_client.post(path, headers=tenant.headers), 409, "conflict")


async def test_replay_delivers_a_time_range_again(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    async with receiver() as rx, running_worker(settings, **FAST):
        made = await subscribe(
            app_client, tenant, rx.url, "contact.created", filter={"title": "Engineer"}
        )
        since = datetime.now(UTC) - timedelta(seconds=1)
        for name in ("Hamilton", "Johnson", "Vaughan"):
            await contact(app_client, tenant, last_name=name, title="Engineer")
        await contact(app_client, tenant, last_name="Other", title="Sales")
        await eventually(lambda: len(rx.requests) >= 3, what="the live deliveries")
        live = set(ids_received(rx))
        until = datetime.now(UTC) + timedelta(seconds=1)
        resp = await app_client.post(
            f"/v1/webhooks/{made['id']}/replay",
            json={"since": since.isoformat(), "until": until.isoformat()},
            headers=tenant.headers,
        )
        assert resp.status_code == 202, resp.text
        assert resp.json()["count"] == 3
        await eventually(lambda: len(rx.requests) >= 6, what="the replayed deliveries")

        async def all_delivered() -> bool:
            rows = await deliveries(app_client, tenant, made["id"])
            return len(rows) == 6 and all(r["status"] == "delivered" for r in rows)

        await eventually(all_delivered, what="every delivery recorded")
    received = ids_received(rx)
    assert len(live) == 3
    assert sorted(received) == sorted([*live, *live])
    rows = await deliveries(app_client, tenant, made["id"])
    assert {r["replay_id"] for r in rows} == {None, resp.json()["replay_id"]}
    for got in rx.requests:
        assert (
            Verifier(made["secret"]).verify(got.body, got.headers)["data"]["record"]["title"]
            == "Engineer"
        )


async def test_a_failing_subscription_is_disabled_and_the_tenant_told(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    rules = {**FAST, "webhook_retry_window": 0.3, "webhook_disable_after": 2}
    async with (
        receiver() as failing,
        receiver() as watcher,
        running_worker(settings, **rules),
    ):
        failing.status = 500
        made = await subscribe(app_client, tenant, failing.url, "contact.created")
        await subscribe(app_client, tenant, watcher.url, "webhook.disabled")
        for name in ("One", "Two"):
            await contact(app_client, tenant, last_name=name)

        async def disabled() -> dict[str, Any] | None:
            resp = await app_client.get(f"/v1/webhooks/{made['id']}", headers=tenant.headers)
            found: dict[str, Any] = resp.json()
            return found if not found["enabled"] else None

        webhook = await eventually(disabled, what="the subscription disabled")
        assert webhook["consecutive_dead"] == 2
        assert webhook["disabled_at"] is not None
        assert "2 deliveries in a row" in webhook["disabled_reason"]
        assert "HTTP 500" in webhook["disabled_reason"]
        (event,) = await events_of(app_client, tenant, type="webhook.disabled")
        assert event["record"]["id"] == made["id"]
        assert event["actor"]["type"] == "system"
        assert event["data"]["reason"] == webhook["disabled_reason"]
        assert event["data"]["record"]["enabled"] is False
        assert made["secret"].removeprefix("whsec_") not in str(event)
        # The other subscription heard of it.
        await eventually(lambda: watcher.requests, what="webhook.disabled delivered")
        assert watcher.requests[0].json()["id"] == event["id"]

        # Disabled: new events are not sent to it.
        sent = len(failing.requests)
        await contact(app_client, tenant, last_name="Three")
        await eventually(
            lambda: events_of(app_client, tenant, type="contact.created"), what="the event"
        )

        resp = await app_client.patch(
            f"/v1/webhooks/{made['id']}",
            json={"enabled": True},
            headers={**tenant.headers, "If-Match": f'"{webhook["version"]}"'},
        )
        assert resp.status_code == 200, resp.text
        again = resp.json()
        assert again["enabled"] is True
        assert again["consecutive_dead"] == 0
        assert again["disabled_reason"] is None
        assert again["disabled_at"] is None
    assert len(failing.requests) == sent


async def test_another_tenant_receives_nothing_of_the_first(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant, settings: Settings
) -> None:
    async with receiver() as mine, receiver() as theirs, running_worker(settings, **FAST):
        await subscribe(app_client, tenant, mine.url)
        await subscribe(app_client, other_tenant, theirs.url)
        for name in ("Alpha", "Beta", "Gamma"):
            await contact(app_client, tenant, last_name=name)
        resp = await app_client.post(
            "/v1/accounts", json={"name": "Theirs"}, headers=other_tenant.headers
        )
        assert resp.status_code == 201

        async def received(rx: Receiver, t: Tenant) -> bool:
            logged = {e["id"] for e in await events_of(app_client, t)}
            return logged <= set(ids_received(rx))

        await eventually(lambda: received(mine, tenant), what="the first tenant's events")
        await eventually(lambda: received(theirs, other_tenant), what="the other's events")
    first = {e["id"] for e in await events_of(app_client, tenant)}
    second = {e["id"] for e in await events_of(app_client, other_tenant)}
    assert set(ids_received(mine)) == first
    assert set(ids_received(theirs)) == second
    assert first.isdisjoint(second)


async def test_a_worker_stopped_half_way_delivers_everything_after_a_restart(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings, worker_id_str: str
) -> None:
    async with receiver() as rx:
        rx.delay = 0.2  # a slow receiver: the worker stops with work in flight
        made = await subscribe(app_client, tenant, rx.url, "contact.created")
        # One delivery at a time: the stop surely comes before the last of them.
        async with running_worker(settings, **FAST, worker_concurrency=1):
            for i in range(12):
                await contact(app_client, tenant, last_name=f"Person {i}")
            await eventually(lambda: len(rx.requests) >= 2, what="the first deliveries")
        wanted = {e["id"] for e in await events_of(app_client, tenant, type="contact.created")}
        assert len(wanted) == 12
        assert not wanted <= set(ids_received(rx)), "the worker finished before it was stopped"
        async with running_worker(settings, **FAST):
            await eventually(
                lambda: wanted <= set(ids_received(rx)), what="every event after the restart"
            )

            async def all_delivered() -> bool:
                rows = await deliveries(app_client, tenant, made["id"])
                return len(rows) == 12 and all(r["status"] == "delivered" for r in rows)

            await eventually(all_delivered, what="every delivery recorded")
    # One delivery row per event, whatever the stream and the queue handed out twice.
    shard_db = names_for(worker_id_str).shards[tenant.shard_id][1]
    conn = await asyncpg.connect(raw_dsn(shard_db))
    try:
        rows = await conn.fetch(
            "SELECT event_id, count(*) AS n FROM webhook_delivery"
            " WHERE tenant_id = $1 GROUP BY event_id",
            uuid.UUID(tenant.id),
        )
    finally:
        await conn.close()
    assert {str(r["event_id"]) for r in rows} == wanted
    assert all(r["n"] == 1 for r in rows)
