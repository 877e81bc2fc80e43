"""The tenant's fulfilment steps (GET/PUT /v1/fulfilment/steps) and the sagas endpoint's
access rules: validation, If-Match, permissions, record scope, other tenants."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.users import PASSWORD, new_user, sign_in
from tests.fulfilment.helpers import configure, new_opportunity, step

BASE = "https://erp.example.com"


async def test_steps_start_empty_then_replace_with_if_match(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    first = await api.get("/v1/fulfilment/steps", headers=tenant.headers)
    assert first.status_code == 200, first.text
    assert first.json() == {"steps": [], "version": 0, "updated_at": None}
    assert first.headers["etag"] == '"0"'
    unchanged = await api.get(
        "/v1/fulfilment/steps", headers={**tenant.headers, "If-None-Match": '"0"'}
    )
    assert unchanged.status_code == 304

    steps = [step("finance", BASE, timeout=5), step("provisioning", BASE, attempts=None)]
    put = await api.put(
        "/v1/fulfilment/steps",
        json={"steps": steps},
        headers={**tenant.headers, "If-Match": '"0"'},
    )
    assert put.status_code == 200, put.text
    assert put.headers["etag"] == '"1"'
    body = put.json()
    assert body["version"] == 1
    assert [s["name"] for s in body["steps"]] == ["finance", "provisioning"]
    assert body["steps"][0]["timeout"] == 5
    assert body["steps"][1]["attempts"] is None

    stale = await api.put(
        "/v1/fulfilment/steps",
        json={"steps": steps[:1]},
        headers={**tenant.headers, "If-Match": '"0"'},
    )
    assert_problem(stale, 412, "precondition-failed")
    again = await api.put(
        "/v1/fulfilment/steps",
        json={"steps": steps[:1]},
        headers={**tenant.headers, "If-Match": '"1"'},
    )
    assert again.status_code == 200, again.text
    read = await api.get("/v1/fulfilment/steps", headers=tenant.headers)
    assert read.json()["version"] == 2
    assert [s["name"] for s in read.json()["steps"]] == ["finance"]

    # The change is an event of the tenant's log.
    log = await api.get(
        "/v1/events", params={"type": "fulfilment.configured"}, headers=tenant.headers
    )
    assert [e["data"]["record"]["version"] for e in log.json()["data"]] == [1, 2]


@pytest.mark.parametrize(
    ("change", "loc", "detail"),
    [
        ({"name": "Finance!"}, ["steps", 0, "name"], None),
        ({"action": {"method": "GET", "url": f"{BASE}/x"}}, ["steps", 0, "action"], None),
        ({"action": {"method": "POST", "url": "ftp://erp.example.com/x"}}, ["steps", 0], None),
        ({"compensation": {"method": "POST", "url": "/relative"}}, ["steps", 0], None),
        ({"action": {"method": "POST", "url": "0"}}, ["steps", 0], None),
        ({"compensation": None}, ["steps", 0, "compensation"], None),
        ({"attempts": 0}, ["steps", 0, "attempts"], None),
        ({"attempts": 11}, ["steps", 0, "attempts"], None),
        ({"timeout": 0}, ["steps", 0, "timeout"], None),
        ({"surprise": 1}, ["steps", 0, "surprise"], None),
    ],
)
async def test_invalid_steps_are_422(
    api: httpx.AsyncClient,
    tenant: Tenant,
    change: dict[str, Any],
    loc: list[Any] | None,
    detail: str | None,
) -> None:
    resp = await api.put(
        "/v1/fulfilment/steps",
        json={"steps": [{**step("finance", BASE), **change}]},
        headers=tenant.headers,
    )
    body = assert_problem(resp, 422, "validation", detail)
    if loc is not None:
        assert any(e["loc"][: len(loc)] == loc for e in body["errors"]), body


async def test_duplicate_names_are_422(api: httpx.AsyncClient, tenant: Tenant) -> None:
    resp = await api.put(
        "/v1/fulfilment/steps",
        json={"steps": [step("finance", BASE), step("finance", BASE)]},
        headers=tenant.headers,
    )
    body = assert_problem(resp, 422, "validation", "steps.1.name")
    assert body["errors"][0]["loc"] == ["steps", 1, "name"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
    ],
)
async def test_private_targets_are_refused_by_default(
    strict_api: httpx.AsyncClient, tenant: Tenant, url: str
) -> None:
    bad = {**step("finance", BASE), "action": {"method": "POST", "url": url}}
    resp = await strict_api.put(
        "/v1/fulfilment/steps", json={"steps": [bad]}, headers=tenant.headers
    )
    body = assert_problem(resp, 422, "validation", "steps.0.action.url")
    assert body["errors"][0]["loc"] == ["steps", 0, "action", "url"]


async def test_too_many_steps_are_422(api: httpx.AsyncClient, tenant: Tenant) -> None:
    many = [step(f"s{i}", BASE) for i in range(21)]
    resp = await api.put("/v1/fulfilment/steps", json={"steps": many}, headers=tenant.headers)
    assert_problem(resp, 422, "validation")


async def test_other_tenants_steps_are_their_own(
    api: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    await configure(api, tenant, [step("finance", BASE)])
    theirs = await api.get("/v1/fulfilment/steps", headers=other_tenant.headers)
    assert theirs.json()["steps"] == []
    assert theirs.json()["version"] == 0


async def test_permissions(api: httpx.AsyncClient, tenant: Tenant) -> None:
    """Reading needs fulfilment:read (sales reps have it, read-only users do not);
    changing needs fulfilment:update (admins)."""
    rep = await new_user(api, tenant, role="sales_rep", password=PASSWORD)
    viewer = await new_user(api, tenant, role="read_only", password=PASSWORD)
    rep_headers = await sign_in(api, tenant, rep["email"])
    viewer_headers = await sign_in(api, tenant, viewer["email"])

    assert (await api.get("/v1/fulfilment/steps", headers=rep_headers)).status_code == 200
    denied = await api.put(
        "/v1/fulfilment/steps", json={"steps": [step("finance", BASE)]}, headers=rep_headers
    )
    assert_problem(denied, 403, "forbidden")
    blind = await api.get("/v1/fulfilment/steps", headers=viewer_headers)
    assert_problem(blind, 403, "forbidden")

    opportunity = await new_opportunity(api, tenant)
    url = f"/v1/opportunities/{opportunity['id']}/fulfilment"
    assert_problem(await api.get(url, headers=viewer_headers), 403, "forbidden")
    assert_problem(await api.post(f"{url}/retry", headers=rep_headers), 403, "forbidden")


async def test_sagas_follow_the_opportunitys_visibility(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    """A rep sees the sagas of their own opportunities; another's is 404 as it would be
    to read it; an opportunity that does not exist is 404."""
    rep = await new_user(api, tenant, role="sales_rep", password=PASSWORD)
    other = await new_user(api, tenant, role="sales_rep", password=PASSWORD)
    rep_headers = await sign_in(api, tenant, rep["email"])
    mine = await new_opportunity(api, tenant, owner_id=rep["id"])
    theirs = await new_opportunity(api, tenant, owner_id=other["id"])

    ok = await api.get(f"/v1/opportunities/{mine['id']}/fulfilment", headers=rep_headers)
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"opportunity_id": mine["id"], "data": []}
    hidden = await api.get(f"/v1/opportunities/{theirs['id']}/fulfilment", headers=rep_headers)
    assert_problem(hidden, 404, "not-found")
    missing = await api.get(f"/v1/opportunities/{uuid.uuid4()}/fulfilment", headers=tenant.headers)
    assert_problem(missing, 404, "not-found")


async def test_another_tenants_opportunity_is_404(
    api: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    opportunity = await new_opportunity(api, tenant)
    url = f"/v1/opportunities/{opportunity['id']}/fulfilment"
    assert_problem(await api.get(url, headers=other_tenant.headers), 404, "not-found")
    assert_problem(await api.post(f"{url}/retry", headers=other_tenant.headers), 404, "not-found")
    # The owner's tenant: no failed saga to retry.
    assert_problem(await api.post(f"{url}/retry", headers=tenant.headers), 409, "conflict")
