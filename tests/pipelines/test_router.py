from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from tests.activities.rows import create_account, create_opportunity, default_pipeline
from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem

# The 412 of a stale If-Match names what the ETag was of.
PIPELINE_CHANGED = "The pipeline has changed since the ETag was issued; read it again."
STAGE_CHANGED = "The pipeline stage has changed since the ETag was issued; read it again."


def stages_body(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "probability": 10 * i, "kind": "open"} for i, n in enumerate(names)]


async def create_pipeline(
    client: httpx.AsyncClient,
    tenant: Tenant,
    name: str = "Renewals",
    stages: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body = {"name": name, "stages": stages or stages_body("A", "B", "C"), **extra}
    resp = await client.post("/v1/pipelines", json=body, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def get_pipeline(client: httpx.AsyncClient, tenant: Tenant, pid: str) -> httpx.Response:
    return await client.get(f"/v1/pipelines/{pid}", headers=tenant.headers)


def names(pipeline: dict[str, Any]) -> list[str]:
    return [s["name"] for s in pipeline["stages"]]


def assert_dense(pipeline: dict[str, Any]) -> None:
    assert [s["position"] for s in pipeline["stages"]] == list(range(len(pipeline["stages"])))


async def test_new_tenant_has_seeded_default(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    resp = await app_client.get("/v1/pipelines", headers=tenant.headers)
    assert resp.status_code == 200
    (sales,) = resp.json()["data"]
    assert sales["is_default"] is True
    assert names(sales) == [
        "Prospecting",
        "Qualification",
        "Proposal",
        "Negotiation",
        "Closed Won",
        "Closed Lost",
    ]
    assert_dense(sales)
    assert sales["stages"][4]["kind"] == "won"


async def test_pipeline_crud(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    resp = await app_client.post(
        "/v1/pipelines",
        json={
            "name": " Renewals ",
            "stages": [
                {"name": "Open", "probability": 20},
                {"name": "Won", "probability": 100, "kind": "won"},
                {"name": "Lost", "probability": 0, "kind": "lost"},
            ],
        },
        headers=tenant.headers,
    )
    assert resp.status_code == 201, resp.text
    created = resp.json()
    pid = created["id"]
    assert resp.headers["etag"] == '"1"'
    assert resp.headers["location"].endswith(f"/v1/pipelines/{pid}")
    assert created["name"] == "Renewals"
    assert created["is_default"] is False  # the seeded pipeline stays the default
    assert names(created) == ["Open", "Won", "Lost"]
    assert [s["kind"] for s in created["stages"]] == ["open", "won", "lost"]
    assert created["stages"][0]["probability"] == 20  # a JSON number
    assert {s["pipeline_id"] for s in created["stages"]} == {pid}
    assert_dense(created)

    got = await get_pipeline(app_client, tenant, pid)
    assert got.status_code == 200
    assert got.json() == created
    assert got.headers["etag"] == '"1"'
    not_modified = await app_client.get(
        f"/v1/pipelines/{pid}", headers={**tenant.headers, "If-None-Match": '"1"'}
    )
    assert not_modified.status_code == 304

    upd = await app_client.patch(
        f"/v1/pipelines/{pid}",
        json={"name": "Renewals 2025"},
        headers={**tenant.headers, "If-Match": '"1"'},
    )
    assert upd.status_code == 200, upd.text
    assert upd.json()["version"] == 2
    assert upd.json()["name"] == "Renewals 2025"
    assert names(upd.json()) == ["Open", "Won", "Lost"]  # same representation as GET
    assert upd.headers["etag"] == '"2"'

    stale = await app_client.patch(
        f"/v1/pipelines/{pid}", json={"name": "X"}, headers={**tenant.headers, "If-Match": '"1"'}
    )
    assert_problem(stale, 412, "precondition-failed", PIPELINE_CHANGED)
    stale_delete = await app_client.delete(
        f"/v1/pipelines/{pid}", headers={**tenant.headers, "If-Match": '"1"'}
    )
    assert_problem(stale_delete, 412, "precondition-failed", PIPELINE_CHANGED)

    deleted = await app_client.delete(
        f"/v1/pipelines/{pid}", headers={**tenant.headers, "If-Match": '"2"'}
    )
    assert deleted.status_code == 204
    assert (await get_pipeline(app_client, tenant, pid)).status_code == 404
    stages = await app_client.get(f"/v1/pipelines/{pid}/stages", headers=tenant.headers)
    assert stages.status_code == 404
    again = await app_client.delete(f"/v1/pipelines/{pid}", headers=tenant.headers)
    assert again.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"name": "P", "stages": []},
        {"name": "P"},
        {"name": "", "stages": stages_body("A")},
        {"name": "P", "stages": [{"name": "A", "probability": 101}]},
        {"name": "P", "stages": [{"name": "A", "probability": -1}]},
        {"name": "P", "stages": [{"name": "A", "probability": 33.333}]},
        {"name": "P", "stages": [{"name": "A", "probability": 10, "kind": "maybe"}]},
        {"name": "P", "stages": [{"name": "A", "probability": 10, "position": 0}]},
        {"name": "P", "stages": [{"name": "", "probability": 10}]},
        {"name": "P", "stages": stages_body("A"), "color": "red"},
        {"name": "P", "stages": stages_body(*(f"s{i}" for i in range(51)))},
    ],
)
async def test_create_pipeline_validation(
    app_client: httpx.AsyncClient, tenant: Tenant, body: dict[str, Any]
) -> None:
    resp = await app_client.post("/v1/pipelines", json=body, headers=tenant.headers)
    assert_problem(resp, 422, "validation")


async def test_update_validation(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    pipeline = await create_pipeline(app_client, tenant)
    pid, sid = pipeline["id"], pipeline["stages"][0]["id"]
    body: dict[str, Any]
    for body in ({"name": None}, {"is_default": None}, {"stages": []}, {"name": ""}):
        r = await app_client.patch(f"/v1/pipelines/{pid}", json=body, headers=tenant.headers)
        assert r.status_code == 422, (body, r.text)
    for body in (
        {"name": None},
        {"probability": None},
        {"probability": 150},
        {"kind": "closed"},
        {"position": -1},
        {"pipeline_id": str(uuid.uuid4())},
    ):
        r = await app_client.patch(
            f"/v1/pipelines/{pid}/stages/{sid}", json=body, headers=tenant.headers
        )
        assert r.status_code == 422, (body, r.text)
    # Past the end of this pipeline: a conflict with its current stages, not bad input.
    beyond = await app_client.patch(
        f"/v1/pipelines/{pid}/stages/{sid}", json={"position": 3}, headers=tenant.headers
    )
    assert beyond.status_code == 409, beyond.text  # three stages: positions 0..2
    beyond = await app_client.post(
        f"/v1/pipelines/{pid}/stages",
        json={"name": "D", "probability": 10, "position": 4},  # 0..3 allowed
        headers=tenant.headers,
    )
    assert beyond.status_code == 409, beyond.text
    for body in (
        {"name": "D"},
        {"name": "D", "probability": 10, "extra": 1},
    ):
        r = await app_client.post(f"/v1/pipelines/{pid}/stages", json=body, headers=tenant.headers)
        assert r.status_code == 422, (body, r.text)
    after = (await get_pipeline(app_client, tenant, pid)).json()
    assert after == pipeline  # nothing changed, not even the version


async def test_default_pipeline_invariants(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    sales = await default_pipeline(app_client, tenant)

    refused = await app_client.patch(
        f"/v1/pipelines/{sales['id']}", json={"is_default": False}, headers=tenant.headers
    )
    assert refused.status_code == 409
    assert "default" in refused.json()["detail"]
    cannot_delete = await app_client.delete(f"/v1/pipelines/{sales['id']}", headers=tenant.headers)
    assert cannot_delete.status_code == 409
    assert "default" in cannot_delete.json()["detail"]

    # Creating a new default unsets the previous one in the same transaction.
    new = await create_pipeline(app_client, tenant, "Enterprise", is_default=True)
    assert new["is_default"] is True
    old = (await get_pipeline(app_client, tenant, sales["id"])).json()
    assert old["is_default"] is False
    assert old["version"] == sales["version"] + 1  # its representation changed
    defaults = await app_client.get("/v1/pipelines?is_default=true", headers=tenant.headers)
    assert [p["id"] for p in defaults.json()["data"]] == [new["id"]]

    # Moving the default back with PATCH.
    moved = await app_client.patch(
        f"/v1/pipelines/{sales['id']}",
        json={"is_default": True},
        headers={**tenant.headers, "If-Match": f'"{old["version"]}"'},
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["is_default"] is True
    assert (await get_pipeline(app_client, tenant, new["id"])).json()["is_default"] is False
    listed = (await app_client.get("/v1/pipelines", headers=tenant.headers)).json()["data"]
    assert [p["id"] for p in listed if p["is_default"]] == [sales["id"]]

    # Unsetting a non-default and re-setting the default are no-ops, never a second default.
    noop = await app_client.patch(
        f"/v1/pipelines/{new['id']}", json={"is_default": False}, headers=tenant.headers
    )
    assert noop.status_code == 200
    same = await app_client.patch(
        f"/v1/pipelines/{sales['id']}", json={"is_default": True}, headers=tenant.headers
    )
    assert same.status_code == 200
    assert same.json()["is_default"] is True
    listed = (await app_client.get("/v1/pipelines", headers=tenant.headers)).json()["data"]
    assert [p["id"] for p in listed if p["is_default"]] == [sales["id"]]

    # A failed precondition leaves the default where it was.
    stale = await app_client.patch(
        f"/v1/pipelines/{new['id']}",
        json={"is_default": True},
        headers={**tenant.headers, "If-Match": '"1"'},
    )
    assert stale.status_code == 412
    assert (await get_pipeline(app_client, tenant, sales["id"])).json()["is_default"] is True

    # The non-default pipeline can be deleted.
    gone = await app_client.delete(f"/v1/pipelines/{new['id']}", headers=tenant.headers)
    assert gone.status_code == 204


async def test_stage_reordering_keeps_positions_dense(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    pipeline = await create_pipeline(app_client, tenant, stages=stages_body("A", "B", "C", "D"))
    pid = pipeline["id"]
    by_name = {s["name"]: s for s in pipeline["stages"]}
    base = f"/v1/pipelines/{pid}/stages"
    version = pipeline["version"]

    async def current() -> dict[str, Any]:
        nonlocal version
        got = (await get_pipeline(app_client, tenant, pid)).json()
        assert_dense(got)
        assert got["version"] > version  # every stage change bumps the pipeline
        version = got["version"]
        return dict(got)

    moved = await app_client.patch(
        f"{base}/{by_name['D']['id']}",
        json={"position": 0},
        headers={**tenant.headers, "If-Match": '"1"'},
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["position"] == 0
    assert moved.headers["etag"] == '"2"'
    state = await current()
    assert names(state) == ["D", "A", "B", "C"]
    # Shifted stages changed too, so their versions (ETags) moved on.
    assert {s["name"]: s["version"] for s in state["stages"]} == {"D": 2, "A": 2, "B": 2, "C": 2}

    r = await app_client.patch(
        f"{base}/{by_name['D']['id']}", json={"position": 2}, headers=tenant.headers
    )
    assert r.status_code == 200, r.text
    state = await current()
    assert names(state) == ["A", "B", "D", "C"]
    assert state["stages"][0]["version"] == 3
    assert state["stages"][3]["version"] == 2

    r = await app_client.patch(
        f"{base}/{by_name['A']['id']}", json={"position": 3, "name": "A2"}, headers=tenant.headers
    )
    assert r.status_code == 200, r.text
    state = await current()
    assert names(state) == ["B", "D", "C", "A2"]

    inserted = await app_client.post(
        base, json={"name": "E", "probability": 55.5, "position": 1}, headers=tenant.headers
    )
    assert inserted.status_code == 201, inserted.text
    assert inserted.json()["position"] == 1
    assert inserted.json()["probability"] == 55.5
    assert inserted.headers["location"].endswith(f"{base}/{inserted.json()['id']}")
    state = await current()
    assert names(state) == ["B", "E", "D", "C", "A2"]

    appended = await app_client.post(
        base, json={"name": "F", "probability": 0, "kind": "lost"}, headers=tenant.headers
    )
    assert appended.status_code == 201
    state = await current()
    assert names(state) == ["B", "E", "D", "C", "A2", "F"]

    # The stage read and the stage list agree with the pipeline.
    one = await app_client.get(f"{base}/{by_name['C']['id']}", headers=tenant.headers)
    assert one.status_code == 200
    assert one.json()["position"] == 3
    assert one.headers["etag"] == f'"{one.json()["version"]}"'
    listed = await app_client.get(base, headers=tenant.headers)
    assert listed.json() == {"data": state["stages"], "next_cursor": None}

    deleted = await app_client.delete(f"{base}/{by_name['D']['id']}", headers=tenant.headers)
    assert deleted.status_code == 204
    state = await current()
    assert names(state) == ["B", "E", "C", "A2", "F"]
    assert (
        await app_client.get(f"{base}/{by_name['D']['id']}", headers=tenant.headers)
    ).status_code == 404

    for name in ("B", "E", "C", "A2"):
        stage = next(s for s in state["stages"] if s["name"] == name)
        r = await app_client.delete(f"{base}/{stage['id']}", headers=tenant.headers)
        assert r.status_code == 204, r.text
    state = await current()
    assert names(state) == ["F"]
    last = await app_client.delete(f"{base}/{state['stages'][0]['id']}", headers=tenant.headers)
    assert last.status_code == 409
    assert "last" in last.json()["detail"]


async def test_concurrent_stage_edits_keep_positions_dense(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    pipeline = await create_pipeline(app_client, tenant, stages=stages_body(*"ABCDEF"))
    pid, stages = pipeline["id"], pipeline["stages"]
    base = f"/v1/pipelines/{pid}/stages"
    moves = [
        app_client.patch(
            f"{base}/{stages[i % 6]['id']}", json={"position": (i * 3) % 5}, headers=tenant.headers
        )
        for i in range(12)
    ]
    adds = [
        app_client.post(
            base, json={"name": f"N{i}", "probability": 1, "position": i}, headers=tenant.headers
        )
        for i in range(4)
    ]
    removes = [app_client.delete(f"{base}/{stages[5]['id']}", headers=tenant.headers)]
    results = await asyncio.gather(*moves, *adds, *removes)
    # Positions stay valid whatever the order (at least 5 stages at any time); a move of
    # the removed stage may come after its removal (404); nothing else fails.
    assert {r.status_code for r in results} <= {200, 201, 204, 404}
    assert sum(r.status_code == 201 for r in results) == 4
    after = (await get_pipeline(app_client, tenant, pid)).json()
    assert_dense(after)
    assert len(after["stages"]) == 6 - 1 + 4
    assert after["version"] == 1 + sum(r.status_code != 404 for r in results)


async def test_stage_etags_and_pipeline_etag(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    pipeline = await create_pipeline(app_client, tenant)
    pid, stage = pipeline["id"], pipeline["stages"][1]
    base = f"/v1/pipelines/{pid}/stages"

    renamed = await app_client.patch(
        f"{base}/{stage['id']}",
        json={"name": "Demo", "probability": 42, "kind": "won"},
        headers={**tenant.headers, "If-Match": '"1"'},
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["version"] == 2
    assert renamed.json()["probability"] == 42
    assert renamed.json()["kind"] == "won"

    # The stage's stale ETag: 412, and nothing changes (not even the pipeline's version).
    before = (await get_pipeline(app_client, tenant, pid)).json()
    stale = await app_client.patch(
        f"{base}/{stage['id']}", json={"name": "X"}, headers={**tenant.headers, "If-Match": '"1"'}
    )
    assert_problem(stale, 412, "precondition-failed", STAGE_CHANGED)
    stale_delete = await app_client.delete(
        f"{base}/{stage['id']}", headers={**tenant.headers, "If-Match": '"1"'}
    )
    assert_problem(stale_delete, 412, "precondition-failed", STAGE_CHANGED)
    assert (await get_pipeline(app_client, tenant, pid)).json() == before

    # A stage change invalidates the pipeline's ETag.
    assert before["version"] == 2
    stale_pipeline = await app_client.patch(
        f"/v1/pipelines/{pid}", json={"name": "Y"}, headers={**tenant.headers, "If-Match": '"1"'}
    )
    assert_problem(stale_pipeline, 412, "precondition-failed", PIPELINE_CHANGED)
    # POST of a stage takes the pipeline's ETag.
    stale_post = await app_client.post(
        base,
        json={"name": "Z", "probability": 5, "position": 0},
        headers={**tenant.headers, "If-Match": '"1"'},
    )
    # Its 412 is about the pipeline, whose ETag it named.
    assert_problem(stale_post, 412, "precondition-failed", PIPELINE_CHANGED)
    fresh_post = await app_client.post(
        base,
        json={"name": "Z", "probability": 5, "position": 0},
        headers={**tenant.headers, "If-Match": '"2"'},
    )
    assert fresh_post.status_code == 201, fresh_post.text
    assert (await get_pipeline(app_client, tenant, pid)).headers["etag"] == '"3"'

    bad = await app_client.patch(
        f"{base}/{stage['id']}", json={"name": "W"}, headers={**tenant.headers, "If-Match": "W/1"}
    )
    assert bad.status_code == 422  # not the declared If-Match format

    # A stage of another pipeline is not found under this one.
    other = await create_pipeline(app_client, tenant, "Other")
    misplaced = await app_client.patch(
        f"{base}/{other['stages'][0]['id']}", json={"name": "Q"}, headers=tenant.headers
    )
    assert misplaced.status_code == 404
    assert (await get_pipeline(app_client, tenant, other["id"])).json() == other


async def test_idempotent_post(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    body = {"name": "Idem", "stages": stages_body("A", "B")}
    headers = {**tenant.headers, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = await app_client.post("/v1/pipelines", json=body, headers=headers)
    second = await app_client.post("/v1/pipelines", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["etag"] == first.headers["etag"]
    listed = await app_client.get("/v1/pipelines?name=Idem", headers=tenant.headers)
    assert len(listed.json()["data"]) == 1
    reused = await app_client.post("/v1/pipelines", json={**body, "name": "Other"}, headers=headers)
    assert reused.status_code == 422
    assert reused.json()["type"].endswith("idempotency-key-reused")

    pid = first.json()["id"]
    stage_headers = {**tenant.headers, "Idempotency-Key": f"s-{uuid.uuid4()}"}
    stage = {"name": "C", "probability": 30, "position": 0}
    s1 = await app_client.post(f"/v1/pipelines/{pid}/stages", json=stage, headers=stage_headers)
    s2 = await app_client.post(f"/v1/pipelines/{pid}/stages", json=stage, headers=stage_headers)
    assert s1.status_code == s2.status_code == 201
    assert s1.json() == s2.json()
    assert names((await get_pipeline(app_client, tenant, pid)).json()) == ["C", "A", "B"]


async def test_pagination_visits_every_pipeline_once(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    created = {(await create_pipeline(app_client, tenant, f"P{i}"))["id"] for i in range(5)}
    sales = await default_pipeline(app_client, tenant)
    for sort in ("name", "-name", "created_at", "-created_at"):
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2, "sort": sort}
            if cursor:
                params["cursor"] = cursor
            page = await app_client.get("/v1/pipelines", params=params, headers=tenant.headers)
            assert page.status_code == 200, page.text
            body = page.json()
            assert all(p["stages"] for p in body["data"])  # list items carry their stages
            seen += [p["id"] for p in body["data"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 6
        assert set(seen) == created | {sales["id"]}
    by_name = (await app_client.get("/v1/pipelines?sort=name", headers=tenant.headers)).json()
    assert [p["name"] for p in by_name["data"]] == ["P0", "P1", "P2", "P3", "P4", "Sales"]

    first = await app_client.get("/v1/pipelines?limit=2&sort=name", headers=tenant.headers)
    wrong_sort = await app_client.get(
        "/v1/pipelines",
        params={"limit": 2, "sort": "-name", "cursor": first.json()["next_cursor"]},
        headers=tenant.headers,
    )
    assert wrong_sort.status_code == 400
    bad_sort = await app_client.get("/v1/pipelines?sort=is_default", headers=tenant.headers)
    assert bad_sort.status_code == 400


async def test_pipeline_and_stage_in_use(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    pipeline = await create_pipeline(app_client, tenant)
    pid, used, free = pipeline["id"], pipeline["stages"][1], pipeline["stages"][2]
    account_id = await create_account(app_client, tenant)
    await create_opportunity(
        app_client, tenant, account_id=account_id, pipeline_id=pid, stage_id=used["id"]
    )

    r = await app_client.delete(f"/v1/pipelines/{pid}", headers=tenant.headers)
    assert r.status_code == 409
    assert "Opportunities" in r.json()["detail"]
    r = await app_client.delete(f"/v1/pipelines/{pid}/stages/{used['id']}", headers=tenant.headers)
    assert r.status_code == 409
    assert "Opportunities" in r.json()["detail"]
    assert (await get_pipeline(app_client, tenant, pid)).json() == pipeline

    # A stage without opportunities can go; one with them can still move.
    r = await app_client.delete(f"/v1/pipelines/{pid}/stages/{free['id']}", headers=tenant.headers)
    assert r.status_code == 204
    r = await app_client.patch(
        f"/v1/pipelines/{pid}/stages/{used['id']}", json={"position": 0}, headers=tenant.headers
    )
    assert r.status_code == 200
    assert names((await get_pipeline(app_client, tenant, pid)).json()) == ["B", "A"]


async def test_another_tenants_pipelines_are_not_listed(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    """By-id routes across tenants are tests/test_cross_tenant.py's; this is the list."""
    await create_pipeline(app_client, tenant, "Secret")
    other_sales = await default_pipeline(app_client, other_tenant)
    listed = (await app_client.get("/v1/pipelines", headers=other_tenant.headers)).json()
    assert [p["id"] for p in listed["data"]] == [other_sales["id"]]
    assert await default_pipeline(app_client, other_tenant) == other_sales
