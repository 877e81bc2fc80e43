"""The subscriptions API: creation with a secret shown once and stored sealed, reads
without it, changes with ETags, validation, private targets, other tenants and missing
permissions. (Deliveries, with a worker: test_delivery.py.)"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from meridian.app import create_app
from meridian.settings import Settings
from tests.fixtures.api import Tenant
from tests.fixtures.databases import names_for, raw_dsn
from tests.fixtures.problems import assert_problem
from tests.fixtures.response_models import checking
from tests.fixtures.users import PASSWORD, new_user, sign_in
from tests.webhooks.conftest import contact, events_of, subscribe

URL = "https://hooks.example.com/meridian"


async def test_create_shows_the_secret_once_and_stores_it_sealed(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings, worker_id_str: str
) -> None:
    body = {
        "url": URL,
        "event_types": ["contact.updated", "opportunity.*"],
        "filter": {"stage_id": str(uuid.uuid4())},
        "description": "billing",
    }
    headers = {**tenant.headers, "Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    with checking(app_client):
        resp = await app_client.post("/v1/webhooks", json=body, headers=headers)
        assert resp.status_code == 201, resp.text
        made = resp.json()
        secret = made["secret"]
        assert secret.startswith("whsec_")
        assert len(secret) == len("whsec_") + 44
        assert resp.headers["location"].endswith(f"/v1/webhooks/{made['id']}")
        assert made["kinds"] == ["contact", "opportunity"]
        assert made["enabled"] is True
        # A retry with the same key answers the same, secret included.
        again = await app_client.post("/v1/webhooks", json=body, headers=headers)
        assert again.status_code == 201
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == made

        read = await app_client.get(f"/v1/webhooks/{made['id']}", headers=tenant.headers)
        assert read.status_code == 200, read.text
        assert "secret" not in read.json()
        assert read.json() == {k: v for k, v in made.items() if k != "secret"}
        listed = await app_client.get("/v1/webhooks", headers=tenant.headers)
        assert [w["id"] for w in listed.json()["data"]] == [made["id"]]
        assert "secret" not in listed.text

    # On the shard: ciphertext only, also in the idempotency record; in events: nothing.
    shard_db = names_for(worker_id_str).shards[tenant.shard_id][1]
    conn = await asyncpg.connect(raw_dsn(shard_db))
    try:
        stored = await conn.fetchval(
            "SELECT secret_enc FROM webhook WHERE tenant_id = $1 AND id = $2",
            uuid.UUID(tenant.id),
            uuid.UUID(made["id"]),
        )
        dump = await conn.fetchval(
            "SELECT string_agg(t::text, '|') FROM idempotency_key t WHERE tenant_id = $1",
            uuid.UUID(tenant.id),
        )
    finally:
        await conn.close()
    raw = secret.removeprefix("whsec_")
    assert stored
    assert raw.encode() not in bytes(stored)
    assert secret.encode() not in bytes(stored)
    assert dump
    assert raw not in dump
    created = [e for e in await events_of(app_client, tenant) if e["type"] == "webhook.created"]
    assert len(created) == 1
    assert created[0]["record"]["id"] == made["id"]
    assert raw not in str(created)
    assert "secret" not in created[0]["data"]["record"]


async def test_update_rotate_and_delete(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    made = await subscribe(app_client, tenant, URL, "contact.*")
    path = f"/v1/webhooks/{made['id']}"
    with checking(app_client):
        resp = await app_client.patch(
            path,
            json={"event_types": ["account.created"], "description": "accounts"},
            headers={**tenant.headers, "If-Match": '"1"'},
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["kinds"] == ["account"]
        assert resp.headers["etag"] == '"2"'
        stale = await app_client.patch(
            path, json={"enabled": False}, headers={**tenant.headers, "If-Match": '"1"'}
        )
        assert_problem(stale, 412, "precondition-failed")

        rotated = await app_client.post(f"{path}/rotate-secret", headers=tenant.headers)
        assert rotated.status_code == 200, rotated.text
        new_secret = rotated.json()["secret"]
        assert new_secret.startswith("whsec_")
        assert new_secret != made["secret"]
    updates = [e for e in await events_of(app_client, tenant) if e["type"] == "webhook.updated"]
    assert updates[-1]["data"]["changes"] == {"secret": {"changed": True}}
    assert new_secret.removeprefix("whsec_") not in str(updates)

    resp = await app_client.delete(path, headers=tenant.headers)
    assert resp.status_code == 204
    assert_problem(await app_client.get(path, headers=tenant.headers), 404, "not-found")
    types = [e["type"] for e in await events_of(app_client, tenant, type="webhook.*")]
    assert types == ["webhook.created", "webhook.updated", "webhook.updated", "webhook.deleted"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"url": "ftp://hooks.example.com/x", "event_types": ["*"]}, "url"),
        ({"url": "https://user:pw@hooks.example.com/x", "event_types": ["*"]}, "url"),
        ({"url": "hooks.example.com/x", "event_types": ["*"]}, "url"),
        ({"url": URL, "event_types": []}, "event_types"),
        ({"url": URL, "event_types": ["contact"]}, "event_types"),
        ({"url": URL, "event_types": ["planet.created"]}, "event_types"),
        ({"url": URL, "event_types": ["*"], "filter": {"stage_id": {"$ne": 1}}}, "filter"),
        ({"url": URL, "event_types": ["*"], "filter": {"Bad Field": 1}}, "filter"),
        ({"url": URL, "event_types": ["*"], "secret": "whsec_mine"}, "secret"),
    ],
)
async def test_invalid_subscriptions_are_422(
    app_client: httpx.AsyncClient, tenant: Tenant, body: dict[str, object], where: str
) -> None:
    resp = await app_client.post("/v1/webhooks", json=body, headers=tenant.headers)
    problem = assert_problem(resp, 422, "validation")
    assert where in str(problem), problem


async def test_invalid_replays_and_retries(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    made = await subscribe(app_client, tenant, URL)
    path = f"/v1/webhooks/{made['id']}"
    now = datetime.now(UTC)

    async def replay(since: datetime, until: datetime) -> httpx.Response:
        body = {"since": since.isoformat(), "until": until.isoformat()}
        return await app_client.post(f"{path}/replay", json=body, headers=tenant.headers)

    empty = await replay(now, now - timedelta(hours=1))
    assert empty.status_code == 202, empty.text
    assert empty.json()["count"] == 0
    # Default retention: 30 days.
    old = now - timedelta(days=40)
    assert_problem(await replay(old, old + timedelta(days=1)), 410, "gone", "retention")
    missing = f"{path}/deliveries/{uuid.uuid4()}/retry"
    assert_problem(await app_client.post(missing, headers=tenant.headers), 404, "not-found")
    listed = await app_client.get(f"{path}/deliveries?status=lost", headers=tenant.headers)
    assert_problem(listed, 422, "validation")


@pytest.fixture(scope="module")
async def strict_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An API instance with the platform's default: private targets refused."""
    app = create_app(settings.model_copy(update={"webhook_allow_private_targets": False}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield client


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://224.0.0.1/hook",
        "http://0.0.0.0/hook",
    ],
)
async def test_private_targets_are_refused_unless_allowed(
    strict_api: httpx.AsyncClient, app_client: httpx.AsyncClient, tenant: Tenant, url: str
) -> None:
    resp = await strict_api.post(
        "/v1/webhooks", json={"url": url, "event_types": ["*"]}, headers=tenant.headers
    )
    problem = assert_problem(resp, 422, "validation", "url:")
    assert "public address" in problem["detail"] or "local name" in problem["detail"], problem
    # The same change of an existing subscription is refused as well.
    made = await subscribe(app_client, tenant, URL)
    patched = await strict_api.patch(
        f"/v1/webhooks/{made['id']}", json={"url": url}, headers=tenant.headers
    )
    assert_problem(patched, 422, "validation", "url:")
    # The test platform allows them (its receivers listen on 127.0.0.1).
    assert (await subscribe(app_client, tenant, url))["url"] == url


async def test_another_tenant_gets_404(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    made = await subscribe(app_client, tenant, URL)
    path = f"/v1/webhooks/{made['id']}"
    theirs = other_tenant.headers
    now = datetime.now(UTC)
    replay = {"since": (now - timedelta(hours=1)).isoformat(), "until": now.isoformat()}
    for resp in (
        await app_client.get(path, headers=theirs),
        await app_client.patch(path, json={"enabled": False}, headers=theirs),
        await app_client.post(f"{path}/rotate-secret", headers=theirs),
        await app_client.get(f"{path}/deliveries", headers=theirs),
        await app_client.post(f"{path}/replay", json=replay, headers=theirs),
        await app_client.delete(path, headers=theirs),
    ):
        assert_problem(resp, 404, "not-found")
    listed = await app_client.get("/v1/webhooks", headers=theirs)
    assert listed.json()["data"] == []
    # Untouched.
    resp = await app_client.get(path, headers=tenant.headers)
    assert resp.status_code == 200
    assert resp.json()["version"] == 1


async def test_a_role_without_webhooks_gets_403(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    made = await subscribe(app_client, tenant, URL)
    rep = await new_user(app_client, tenant, role="sales_rep", password=PASSWORD)
    headers = await sign_in(user_api, tenant, rep["email"])
    path = f"/v1/webhooks/{made['id']}"
    for resp in (
        await app_client.post(
            "/v1/webhooks", json={"url": URL, "event_types": ["*"]}, headers=headers
        ),
        await app_client.get("/v1/webhooks", headers=headers),
        await app_client.get(path, headers=headers),
        await app_client.patch(path, json={"enabled": False}, headers=headers),
        await app_client.get(f"{path}/deliveries", headers=headers),
        await app_client.delete(path, headers=headers),
    ):
        assert_problem(resp, 403, "forbidden")


async def test_contacts_events_go_only_to_matching_filters(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    """``matches``: types, kinds and the record filter (the consumer's rule)."""
    from meridian.webhooks.service import matches

    await contact(app_client, tenant, last_name="Hopper", title="Rear admiral")
    await contact(app_client, tenant, last_name="Lovelace", title="Countess")
    created = [e for e in await events_of(app_client, tenant) if e["type"] == "contact.created"]
    sub = {"kinds": ["contact"], "event_types": ["contact.created"], "filter": {}}
    assert all(matches(sub, e) for e in created)
    only = {**sub, "filter": {"title": "Countess"}}
    assert [e["data"]["record"]["last_name"] for e in created if matches(only, e)] == ["Lovelace"]
    assert not any(matches({**sub, "event_types": ["contact.deleted"]}, e) for e in created)
    assert not any(matches({**sub, "kinds": ["account"]}, e) for e in created)
    assert all(matches({**sub, "event_types": ["*"]}, e) for e in created)


async def test_filter_numbers_are_bounded(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    """JSONB would give a float such as 1e160 back as a 161-digit integer: refused."""
    made = await subscribe(app_client, tenant, URL)
    path = f"/v1/webhooks/{made['id']}"
    huge = await app_client.patch(
        path, json={"filter": {"amount": -9.9e160}}, headers=tenant.headers
    )
    assert_problem(huge, 422, "validation")
    fine = {"filter": {"probability": 0.5, "position": 2**40, "name": "x", "flag": True}}
    resp = await app_client.patch(path, json=fine, headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["filter"] == fine["filter"]
