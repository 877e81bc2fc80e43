"""Sagas run by a real worker against real HTTP receivers: the happy path, compensation,
a compensation that fails (and its retry), a worker stopped mid-saga, a redelivered won
event, and a tenant without steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

import httpx
from redis.asyncio import Redis
from saq.job import Status

from loadtests.receivers import Received
from meridian.events import bus
from meridian.events.jobs import queue_for
from meridian.fulfilment.jobs import job_key
from meridian.settings import Settings
from tests.fixtures.api import Tenant
from tests.fixtures.receivers import receiver
from tests.fixtures.response_models import checking
from tests.fixtures.waiting import eventually
from tests.fixtures.worker import running_worker
from tests.fulfilment.helpers import (
    WORKER,
    configure,
    entry_of,
    events,
    handled_by_sagas,
    new_opportunity,
    sagas,
    step,
    win,
)


def saga_in(
    api: httpx.AsyncClient, tenant: Tenant, opportunity_id: str, *states: str
) -> Callable[[], Any]:
    """A predicate: the opportunity's only saga, once it is in one of ``states``."""

    async def check() -> dict[str, Any] | None:
        found = await sagas(api, tenant, opportunity_id)
        assert len(found) <= 1, found
        return found[0] if found and found[0]["state"] in states else None

    return check


def keys(rx: list[Received]) -> list[str]:
    return [r.headers["idempotency-key"] for r in rx]


async def won_event(api: httpx.AsyncClient, tenant: Tenant, opportunity_id: str) -> dict[str, Any]:
    (event,) = [
        e
        for e in await events(api, tenant, "opportunity.won")
        if e["record"]["id"] == opportunity_id
    ]
    return event


async def test_happy_path(api: httpx.AsyncClient, tenant: Tenant, settings: Settings) -> None:
    async with receiver() as finance, receiver() as provisioning:
        finance.body = b'{"invoice": "INV-1"}'
        await configure(
            api, tenant, [step("finance", finance.url), step("provisioning", provisioning.url)]
        )
        opportunity = await new_opportunity(api, tenant)
        async with running_worker(settings, **WORKER):
            await win(api, tenant, opportunity["id"])
            saga = await eventually(
                saga_in(api, tenant, opportunity["id"], "completed"), what="the saga completed"
            )
    sid = saga["id"]
    assert [r.path for r in finance.requests] == ["/finance"]
    assert [r.path for r in provisioning.requests] == ["/provisioning"]
    assert finance.requests[0].at < provisioning.requests[0].at
    assert keys(finance.requests) == [f"{sid}:finance"]
    assert keys(provisioning.requests) == [f"{sid}:provisioning"]
    first, second = finance.requests[0].json(), provisioning.requests[0].json()
    assert (first["saga_id"], first["tenant_id"]) == (sid, tenant.id)
    assert (first["step"], first["phase"]) == ("finance", "action")
    assert first["opportunity"]["id"] == opportunity["id"]
    assert first["opportunity"]["amount"] == "1200.50"
    assert first["results"] == {}
    assert second["results"] == {"finance": {"invoice": "INV-1"}}

    assert [s["state"] for s in saga["steps"]] == ["completed", "completed"]
    assert [s["attempts"] for s in saga["steps"]] == [1, 1]
    assert saga["steps"][0]["result"] == {"status": 200, "body": {"invoice": "INV-1"}}
    assert saga["finished_at"] is not None
    assert saga["error"] is None
    log = await events(api, tenant, "fulfilment.*")
    assert [e["type"] for e in log if e["record"]["id"] == sid] == [
        "fulfilment.started",
        "fulfilment.step_completed",
        "fulfilment.step_completed",
        "fulfilment.completed",
    ]
    assert all(e["record"]["kind"] == "fulfilment" for e in log)
    assert log[-1]["data"]["record"]["state"] == "completed"


async def test_a_step_failing_every_time_compensates_the_done_ones(
    api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    async with receiver() as finance, receiver() as provisioning:
        provisioning.status = 503
        await configure(
            api,
            tenant,
            [step("finance", finance.url), step("provisioning", provisioning.url, attempts=3)],
        )
        opportunity = await new_opportunity(api, tenant)
        async with running_worker(settings, **WORKER):
            await win(api, tenant, opportunity["id"])
            saga = await eventually(
                saga_in(api, tenant, opportunity["id"], "compensated"),
                what="the saga compensated",
            )
    sid = saga["id"]
    assert [r.path for r in provisioning.requests] == ["/provisioning"] * 3
    assert keys(provisioning.requests) == [f"{sid}:provisioning"] * 3
    assert [r.path for r in finance.requests] == ["/finance", "/finance/undo"]
    undo = finance.requests[1]
    assert undo.headers["idempotency-key"] == f"{sid}:finance:compensation"
    assert undo.json()["phase"] == "compensation"
    assert undo.json()["results"] == {"finance": {"ok": True}}
    finance_step, provisioning_step = saga["steps"]
    assert finance_step["state"] == "compensated"
    assert finance_step["compensated_at"] is not None
    assert provisioning_step["state"] == "failed"
    assert provisioning_step["attempts"] == 3
    assert provisioning_step["last_error"].startswith("HTTP 503")
    types = [e["type"] for e in await events(api, tenant, "fulfilment.*")]
    assert types.count("fulfilment.step_failed") == 3
    assert types[-2:] == ["fulfilment.step_compensated", "fulfilment.compensated"]


async def test_a_compensation_failing_fails_the_saga_until_retried(
    api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    undo_works = False

    def finance_answer(request: Received) -> int:
        return 200 if not request.path.endswith("/undo") or undo_works else 500

    async with receiver() as finance, receiver() as provisioning:
        finance.answer = finance_answer
        provisioning.status = 500
        await configure(
            api,
            tenant,
            [step("finance", finance.url), step("provisioning", provisioning.url, attempts=1)],
        )
        opportunity = await new_opportunity(api, tenant)
        async with running_worker(settings, **WORKER):
            await win(api, tenant, opportunity["id"])
            saga = await eventually(
                saga_in(api, tenant, opportunity["id"], "failed"), what="the saga failed"
            )
            assert saga["error"].startswith("compensation of step 'finance' failed: HTTP 500")
            finance_step = saga["steps"][0]
            assert finance_step["state"] == "compensating"
            assert finance_step["compensation_attempts"] == 2
            assert [r.path for r in finance.requests] == ["/finance"] + ["/finance/undo"] * 2
            assert (await events(api, tenant, "fulfilment.failed"))[-1]["data"]["error"]

            # Fixed on the receiver's side: a retry resumes the compensation.
            undo_works = True
            with checking(api) as checker:  # its response, against its declared model
                retried = await api.post(
                    f"/v1/opportunities/{opportunity['id']}/fulfilment/retry",
                    headers=tenant.headers,
                )
            assert checker.violations == []
            assert retried.status_code == 202, retried.text
            assert retried.json()["state"] == "compensating"
            saga = await eventually(
                saga_in(api, tenant, opportunity["id"], "compensated"),
                what="the saga compensated after the retry",
            )
    assert saga["steps"][0]["state"] == "compensated"
    assert saga["error"] is None
    assert [r.path for r in finance.requests] == ["/finance"] + ["/finance/undo"] * 3
    again = await api.post(
        f"/v1/opportunities/{opportunity['id']}/fulfilment/retry", headers=tenant.headers
    )
    assert again.status_code == 409, again.text


async def test_a_worker_stopped_mid_saga_is_taken_over(
    api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    """The provisioning call is in flight when its worker stops: another worker makes it
    again under the same Idempotency-Key; finance, done before, is not called again."""
    async with receiver() as finance, receiver() as provisioning:
        provisioning.delay = 5.0
        await configure(
            api, tenant, [step("finance", finance.url), step("provisioning", provisioning.url)]
        )
        opportunity = await new_opportunity(api, tenant)
        async with running_worker(settings, **WORKER):
            await win(api, tenant, opportunity["id"])
            await eventually(lambda: provisioning.requests, what="the provisioning call")
        provisioning.delay = 0.0
        running = await sagas(api, tenant, opportunity["id"])
        assert running[0]["state"] == "running"
        assert running[0]["steps"][1]["state"] == "running"
        async with running_worker(settings, **WORKER):
            saga = await eventually(
                saga_in(api, tenant, opportunity["id"], "completed"),
                what="the saga completed by the second worker",
            )
    sid = saga["id"]
    assert [r.path for r in finance.requests] == ["/finance"]
    assert len(provisioning.requests) == 2
    assert keys(provisioning.requests) == [f"{sid}:provisioning"] * 2
    assert [s["state"] for s in saga["steps"]] == ["completed", "completed"]
    assert [s["attempts"] for s in saga["steps"]] == [1, 2]
    completed = [
        e["data"]["step"]
        for e in await events(api, tenant, "fulfilment.step_completed")
        if e["record"]["id"] == sid
    ]
    assert completed == ["finance", "provisioning"]


async def test_a_lost_job_is_queued_again(
    api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    """A saga whose job is gone (a worker killed, Redis losing it) is found by the
    recovery job, which queues its current call again."""
    assert settings.redis_url
    async with receiver() as finance, receiver() as provisioning:
        provisioning.delay = 5.0
        await configure(
            api, tenant, [step("finance", finance.url), step("provisioning", provisioning.url)]
        )
        opportunity = await new_opportunity(api, tenant)
        async with running_worker(settings, **WORKER):
            await win(api, tenant, opportunity["id"])
            await eventually(lambda: provisioning.requests, what="the provisioning call")
        provisioning.delay = 0.0
        (saga,) = await sagas(api, tenant, opportunity["id"])
        queue = queue_for(settings)
        await queue.connect()
        try:
            job = await queue.job(job_key(UUID(saga["id"]), "action", 1))
            assert job is not None
            await queue.abort(job, "lost")  # it was queued again: now it is gone
            gone = await queue.job(job.key)
            assert gone is not None
            assert gone.status == Status.ABORTED
        finally:
            await queue.disconnect()
        async with running_worker(settings, **WORKER):
            saga = await eventually(
                saga_in(api, tenant, opportunity["id"], "completed"),
                what="the saga completed after its job was lost",
            )
    assert [r.path for r in finance.requests] == ["/finance"]
    assert keys(provisioning.requests) == [f"{saga['id']}:provisioning"] * 2


async def test_a_redelivered_won_event_starts_no_second_saga(
    api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    assert settings.redis_url
    async with receiver() as finance:
        await configure(api, tenant, [step("finance", finance.url)])
        opportunity = await new_opportunity(api, tenant)
        async with running_worker(settings, **WORKER):
            await win(api, tenant, opportunity["id"])
            await eventually(
                saga_in(api, tenant, opportunity["id"], "completed"), what="the saga completed"
            )
            # The same event on the stream again, as a relay that died before recording
            # its position would publish it.
            event = await won_event(api, tenant, opportunity["id"])
            redis: Redis = Redis.from_url(settings.redis_url)
            try:
                await bus.publish(redis, tenant.id, [event], maxlen=settings.event_stream_max)  # type: ignore[arg-type]
            finally:
                await redis.aclose()
            again = await entry_of(settings.redis_url, event["id"])
            assert again is not None
            await eventually(
                lambda: handled_by_sagas(settings.redis_url or "", again),
                what="the redelivery handled",
            )
    found = await sagas(api, tenant, opportunity["id"])
    assert len(found) == 1
    assert found[0]["won_event_id"] == event["id"]
    assert [r.path for r in finance.requests] == ["/finance"]
    assert len(await events(api, tenant, "fulfilment.started")) == 1


async def test_no_steps_no_saga(api: httpx.AsyncClient, tenant: Tenant, settings: Settings) -> None:
    assert settings.redis_url
    opportunity = await new_opportunity(api, tenant)
    async with running_worker(settings, **WORKER):
        await win(api, tenant, opportunity["id"])
        event = await won_event(api, tenant, opportunity["id"])

        async def handled() -> bool:
            entry = await entry_of(settings.redis_url or "", event["id"])
            return entry is not None and await handled_by_sagas(settings.redis_url or "", entry)

        await eventually(handled, what="the won event handled")
    assert await sagas(api, tenant, opportunity["id"]) == []
    assert await events(api, tenant, "fulfilment.*") == []


async def test_steps_are_a_snapshot(
    api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    """A saga keeps the steps it started with; the next won opportunity takes the new
    ones (and an opportunity won twice has two sagas)."""
    async with receiver() as finance, receiver() as crm:
        crm.delay = 1.0
        await configure(api, tenant, [step("finance", finance.url), step("crm", crm.url)])
        opportunity = await new_opportunity(api, tenant)
        async with running_worker(settings, **WORKER):
            await win(api, tenant, opportunity["id"])
            await eventually(lambda: crm.requests, what="the crm call")
            await configure(api, tenant, [step("finance", finance.url)])
            first = await eventually(
                saga_in(api, tenant, opportunity["id"], "completed"), what="the first saga"
            )
            assert [s["name"] for s in first["steps"]] == ["finance", "crm"]
            assert first["config_version"] == 1
            other = await new_opportunity(api, tenant)
            await win(api, tenant, other["id"])
            second = await eventually(
                saga_in(api, tenant, other["id"], "completed"), what="the second saga"
            )
    assert [s["name"] for s in second["steps"]] == ["finance"]
    assert second["config_version"] == 2
