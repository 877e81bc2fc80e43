"""GET /v1/stream: live events over Server-Sent Events, served by a real uvicorn and fed
by a real worker (the relay publishes to Redis, the API's hub reads it)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from meridian.events import bus
from meridian.events.hub import TOO_SLOW, EventHub
from meridian.settings import Settings
from meridian.worker.main import RunningWorker
from meridian.worker.retention import prune_expired
from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.sse import ServedApi, open_stream, served_api
from tests.fixtures.tcp_proxy import TcpProxy
from tests.fixtures.users import PASSWORD, login_api, new_user, sign_in
from tests.fixtures.waiting import eventually
from tests.fixtures.worker import running_worker, stream_events
from tests.roles.helpers import permissions, role_headers
from tests.worker.test_retention import age_events

Headers = dict[str, str]
LIMIT = 3


@pytest.fixture(scope="module")
async def served(settings: Settings) -> AsyncIterator[ServedApi]:
    """The API with a quick heartbeat and a small per-tenant limit."""
    update = {"stream_heartbeat": 0.3, "stream_max_per_tenant": LIMIT}
    async with served_api(settings.model_copy(update=update)) as running:
        yield running


@pytest.fixture(scope="module")
def api(served: ServedApi) -> str:
    return served.url


@pytest.fixture(scope="module")
async def worker(settings: Settings) -> AsyncIterator[RunningWorker]:
    async with running_worker(settings) as running:
        yield running


@pytest.fixture(scope="module")
async def login(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with login_api(settings) as client:
        yield client


async def contact(client: httpx.AsyncClient, headers: Headers, name: str) -> dict[str, Any]:
    resp = await client.post("/v1/contacts", json={"last_name": name}, headers=headers)
    assert resp.status_code == 201, resp.text
    made: dict[str, Any] = resp.json()
    return made


async def log_after(client: httpx.AsyncClient, tenant: Tenant, after: int) -> list[dict[str, Any]]:
    resp = await client.get(
        "/v1/events", params={"after": after, "limit": 200}, headers=tenant.headers
    )
    assert resp.status_code == 200, resp.text
    data: list[dict[str, Any]] = resp.json()["data"]
    return data


def about(record: dict[str, Any]) -> Any:
    return lambda event: event["record"]["id"] == record["id"]


async def status_of(api: str, headers: Headers, params: dict[str, str] | None = None) -> int:
    """The status a stream request gets (a stream that opens is closed at once)."""
    async with (
        httpx.AsyncClient(base_url=api, timeout=httpx.Timeout(30, read=None)) as client,
        client.stream("GET", "/v1/stream", headers=headers, params=params) as resp,
    ):
        return resp.status_code


async def test_a_write_reaches_its_tenants_stream_and_no_other(
    app_client: httpx.AsyncClient,
    served: ServedApi,
    worker: RunningWorker,
    tenant: Tenant,
    other_tenant: Tenant,
) -> None:
    api = served.url
    hub: EventHub = served.app.state.live_streams.hub
    delivered = hub.delivered
    async with (
        open_stream(api, tenant.headers) as mine,
        open_stream(api, other_tenant.headers) as theirs,
    ):
        made = await contact(app_client, tenant.headers, "Lovelace")
        seen = await mine.events_until(about(made))
        assert seen[-1]["type"] == "contact.created"
        assert seen[-1]["data"]["record"]["last_name"] == "Lovelace"
        # The other tenant's stream, read up to a write of its own made afterwards:
        # the first tenant's event would have come before it.
        marker = await contact(app_client, other_tenant.headers, "Marker")
        seen_there = await theirs.events_until(about(marker))
    assert made["id"] not in {e["record"]["id"] for e in seen_there}
    own = {e["id"] for e in await log_after(app_client, other_tenant, 0)}
    assert {e["id"] for e in seen_there} <= own
    assert hub.delivered > delivered  # live, through the hub (not only the log)


async def test_a_sales_rep_sees_the_events_of_their_records_only(
    app_client: httpx.AsyncClient,
    api: str,
    worker: RunningWorker,
    login: httpx.AsyncClient,
    tenant: Tenant,
) -> None:
    lead = await new_user(app_client, tenant, role="sales_manager", password=PASSWORD)
    rep = await new_user(app_client, tenant, manager_id=lead["id"], password=PASSWORD)
    peer = await new_user(app_client, tenant, manager_id=lead["id"], password=PASSWORD)
    rep_headers = await sign_in(login, tenant, rep["email"])
    peer_headers = await sign_in(login, tenant, peer["email"])
    lead_headers = await sign_in(login, tenant, lead["email"])
    async with (
        open_stream(api, rep_headers) as rep_stream,
        open_stream(api, lead_headers) as lead_stream,
    ):
        theirs = await contact(app_client, peer_headers, "Colleague")
        mine = await contact(app_client, rep_headers, "Own")
        seen = await rep_stream.events_until(about(mine))
        # The lead sees both (the reporting line).
        seen_by_lead = await lead_stream.events_until(about(mine))
    assert theirs["id"] not in {e["record"]["id"] for e in seen}
    assert seen[-1]["record"]["owner_id"] == rep["id"]
    assert theirs["id"] in {e["record"]["id"] for e in seen_by_lead}
    # Exactly what the rep's page of the log shows, in the same order.
    resp = await app_client.get(
        "/v1/events", params={"after": seen[0]["seq"] - 1}, headers=rep_headers
    )
    listed = [e for e in resp.json()["data"] if e["seq"] <= seen[-1]["seq"]]
    assert [e["id"] for e in listed] == [e["id"] for e in seen]


async def test_reconnecting_with_last_event_id_resumes_without_gap_or_repeat(
    app_client: httpx.AsyncClient, api: str, worker: RunningWorker, tenant: Tenant
) -> None:
    async with open_stream(api, tenant.headers) as stream:
        await contact(app_client, tenant.headers, "One")
        two = await contact(app_client, tenant.headers, "Two")
        first = await stream.events_until(about(two))
    last = first[-1]["seq"]
    # Written while nobody listens.
    missed = [await contact(app_client, tenant.headers, f"Missed {i}") for i in range(3)]
    # The header wins over ?after= (a browser keeps the URL and sends the header).
    headers = {**tenant.headers, "Last-Event-ID": str(last)}
    async with open_stream(api, headers, params={"after": "0"}) as stream:
        later = await contact(app_client, tenant.headers, "Later")
        second = await stream.events_until(about(later))
    assert {m["id"] for m in missed} <= {e["record"]["id"] for e in second}
    seqs = [e["seq"] for e in first + second]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no repeat
    logged = await log_after(app_client, tenant, last)
    assert [e["id"] for e in second] == [e["id"] for e in logged if e["seq"] <= seqs[-1]]


async def test_after_replays_the_log_then_follows(
    app_client: httpx.AsyncClient, api: str, worker: RunningWorker, tenant: Tenant
) -> None:
    before = [await contact(app_client, tenant.headers, f"Early {i}") for i in range(2)]
    async with open_stream(api, tenant.headers, params={"after": "0"}) as stream:
        caught_up = await stream.events_until(about(before[-1]))
        live = await contact(app_client, tenant.headers, "Live")
        followed = await stream.events_until(about(live))
    everything = caught_up + followed
    assert [e["id"] for e in everything] == [
        e["id"] for e in await log_after(app_client, tenant, 0) if e["seq"] <= everything[-1]["seq"]
    ]


async def test_type_filter(
    app_client: httpx.AsyncClient, api: str, worker: RunningWorker, tenant: Tenant
) -> None:
    async with open_stream(api, tenant.headers, params={"type": "account.*"}) as stream:
        await contact(app_client, tenant.headers, "Not wanted")
        resp = await app_client.post("/v1/accounts", json={"name": "Acme"}, headers=tenant.headers)
        assert resp.status_code == 201, resp.text
        account = resp.json()
        seen = await stream.events_until(about(account))
    assert [e["type"] for e in seen] == ["account.created"]

    async with (
        httpx.AsyncClient(base_url=api) as client,
        client.stream(
            "GET", "/v1/stream", params={"type": "nonsense"}, headers=tenant.headers
        ) as bad,
    ):
        await bad.aread()
        assert_problem(bad, 422, "validation", "type")


async def test_a_resume_point_past_the_retention_is_gone(
    app_client: httpx.AsyncClient, api: str, worker: RunningWorker, tenant: Tenant
) -> None:
    """As GET /v1/events: 410 before the stream starts, naming the oldest seq kept."""
    made = [await contact(app_client, tenant.headers, f"Old {i}") for i in range(3)]
    logged = await log_after(app_client, tenant, 0)
    last_old = next(e["seq"] for e in logged if e["record"]["id"] == made[1]["id"])
    settings = worker.context.settings

    async def relayed() -> bool:
        published = await stream_events(settings.redis_url or "", tenant.id)
        return any(e["record"]["id"] == made[-1]["id"] for e in published)

    await eventually(relayed, what="the events relayed")
    await age_events(settings, tenant, 400, up_to_seq=last_old)
    assert await prune_expired(worker.context.runtime, default_days=30) >= 1
    gone = await _refusal(api, {**tenant.headers, "Last-Event-ID": "1"})
    body = assert_problem(gone, 410, "gone")
    assert body["oldest_seq"] == last_old + 1
    # From the oldest kept: the stream opens and replays it.
    async with open_stream(api, {**tenant.headers, "Last-Event-ID": str(last_old)}) as stream:
        seen = await stream.events_until(about(made[-1]))
    assert [e["seq"] for e in seen] == [last_old + 1]


async def test_heartbeat_arrives(api: str, tenant: Tenant) -> None:
    async with open_stream(api, tenant.headers) as stream:
        while "heartbeat" not in (await stream.next_frame()).comments:
            pass


async def test_a_tenant_may_hold_a_limited_number_of_streams(
    api: str, tenant: Tenant, other_tenant: Tenant
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        held = [
            await stack.enter_async_context(open_stream(api, tenant.headers)) for _ in range(LIMIT)
        ]
        assert len(held) == LIMIT
        async with (
            httpx.AsyncClient(base_url=api) as client,
            client.stream("GET", "/v1/stream", headers=tenant.headers) as refused,
        ):
            await refused.aread()
            assert_problem(refused, 429, "too-many-streams")
            assert int(refused.headers["retry-after"]) >= 1
        # Another tenant's limit is its own.
        assert await status_of(api, other_tenant.headers) == 200

    # Closed streams give their places back.
    async def opens() -> bool:
        return await status_of(api, tenant.headers) == 200

    await eventually(opens, what="a stream opening after others closed")


async def test_refusals(app_client: httpx.AsyncClient, api: str, tenant: Tenant) -> None:
    assert_problem(await _refusal(api, {}), 401, "unauthorized")
    resp = await app_client.post(
        "/v1/roles",
        json={"name": "contact_reader", "permissions": permissions(("contacts", "read"))},
        headers=tenant.headers,
    )
    assert resp.status_code == 201, resp.text
    reader = await role_headers(app_client, tenant, "contact_reader")
    body = assert_problem(await _refusal(api, reader), 403, "forbidden")
    assert (body["object"], body["action"]) == ("events", "read")
    # A resume point the log has not reached yet.
    await contact(app_client, tenant.headers, "Some event")
    ahead = {**tenant.headers, "Last-Event-ID": "999999"}
    assert_problem(await _refusal(api, ahead), 422, "validation")
    assert_problem(await _refusal(api, {**tenant.headers, "Last-Event-ID": "x"}), 422, "validation")


async def _refusal(api: str, headers: Headers) -> httpx.Response:
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        return await client.get("/v1/stream", headers=headers)  # refused: not a stream


async def test_without_redis_streams_poll_the_log(
    app_client: httpx.AsyncClient, settings: Settings, tenant: Tenant
) -> None:
    """An instance whose Redis is unreachable: its hub never reads, its streams read the
    log every second, and its limit is counted in the process (never an error)."""
    down = settings.model_copy(
        update={"redis_url": "redis://127.0.0.1:9/0", "stream_max_per_tenant": 1}
    )
    async with served_api(down) as lonely, open_stream(lonely.url, tenant.headers) as stream:
        made = await contact(app_client, tenant.headers, "Polled")
        seen = await stream.events_until(about(made))
        assert seen[-1]["type"] == "contact.created"
        assert not lonely.app.state.live_streams.hub.live
        refused = await _refusal(lonely.url, tenant.headers)
        assert_problem(refused, 429, "too-many-streams")
        assert int(refused.headers["retry-after"]) >= 1


async def test_a_stream_outlives_its_hub_losing_redis(
    app_client: httpx.AsyncClient, settings: Settings, worker: RunningWorker, tenant: Tenant
) -> None:
    """Redis goes away under an open stream: it reads the log meanwhile, and follows the
    hub again once Redis is back; every event once, in order."""
    assert settings.redis_url
    target = urlsplit(settings.redis_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    proxied = target._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
    try:
        async with (
            served_api(settings.model_copy(update={"redis_url": proxied})) as instance,
            open_stream(instance.url, tenant.headers) as stream,
        ):
            hub: EventHub = instance.app.state.live_streams.hub
            await eventually(lambda: hub.live, what="the hub reading")
            seen = await stream.events_until(about(await contact(app_client, tenant.headers, "A")))
            await proxy.cut()
            await eventually(lambda: not hub.live, what="the hub noticing Redis gone")
            during = await contact(app_client, tenant.headers, "While Redis is away")
            seen += await stream.events_until(about(during))
            epoch = hub.epoch
            await proxy.restore()
            await eventually(lambda: hub.live and hub.epoch > epoch, what="the hub back")
            delivered = hub.delivered
            back = await contact(app_client, tenant.headers, "Back")
            seen += await stream.events_until(about(back))
            await eventually(lambda: hub.delivered > delivered, what="the hub delivering")
    finally:
        await proxy.close()
    seqs = [e["seq"] for e in seen]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_a_stream_that_cannot_keep_up_is_closed(settings: Settings) -> None:
    """The hub never waits for a stream nor buffers without bound: a subscriber whose
    buffer is full is dropped with a reason, the others of its tenant keep theirs."""
    assert settings.redis_url
    hub = EventHub(settings.redis_url, queue_size=2)
    tenant_id = uuid.uuid4()
    try:
        slow = hub.subscribe(tenant_id)
        await eventually(lambda: hub.live, what="the hub reading")
        events = [{"seq": n, "type": "contact.created", "record": {}} for n in range(1, 4)]
        await publish(settings.redis_url, tenant_id, events)
        await eventually(lambda: slow.closed == TOO_SLOW, what="the slow stream closed")
        assert slow.ready.is_set()
        assert slow.take() == []
        assert hub.subscribers == 0
    finally:
        await hub.close()


async def publish(redis_url: str, tenant_id: uuid.UUID, events: list[dict[str, Any]]) -> None:
    client = bus.connect(redis_url)
    try:
        await bus.publish(client, tenant_id, events, maxlen=200_000)
    finally:
        await client.aclose()
