"""Merges and record scope, roles and tenants: a user merges only records in her scope
(404) with a role that updates and deletes the kind (403), sees the merges she made or
whose survivor she sees; another tenant's ids are 404 everywhere."""

from __future__ import annotations

import httpx

from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.fixtures.users import new_user, sign_in
from tests.merges.records import get, post

PASSWORD = "correct horse battery staple"


async def test_record_scope_and_roles(
    app_client: httpx.AsyncClient,
    user_api: httpx.AsyncClient,
    tenant: Tenant,
) -> None:
    h = tenant.headers
    rep = await new_user(app_client, tenant, password=PASSWORD)
    viewer = await new_user(app_client, tenant, role="read_only", password=PASSWORD)
    agent = await new_user(app_client, tenant, role="support_agent", password=PASSWORD)
    rep_h = await sign_in(user_api, tenant, rep["email"])
    viewer_h = await sign_in(user_api, tenant, viewer["email"])
    agent_h = await sign_in(user_api, tenant, agent["email"])
    mine = [
        await post(app_client, h, "/v1/accounts", name=f"Mine {n}", owner_id=rep["id"])
        for n in range(2)
    ]
    theirs = await post(app_client, h, "/v1/accounts", name="Not hers")
    outside = await app_client.post(
        "/v1/accounts/merge",
        json={"survivor_id": mine[0]["id"], "merged_ids": [theirs["id"]]},
        headers=rep_h,
    )
    assert_problem(outside, 404, "not-found")
    for headers in (viewer_h, agent_h):
        refused = await app_client.post(
            "/v1/accounts/merge",
            json={"survivor_id": mine[0]["id"], "merged_ids": [mine[1]["id"]]},
            headers=headers,
        )
        assert_problem(refused, 403, "forbidden")
    done = await app_client.post(
        "/v1/accounts/merge",
        json={"survivor_id": mine[0]["id"], "merged_ids": [mine[1]["id"]]},
        headers=rep_h,
    )
    assert done.status_code == 201, done.text
    merge_id = done.json()["merge_id"]
    # She sees her merge; a peer of hers does not (neither made it nor sees the survivor).
    assert [m["id"] for m in (await get(app_client, rep_h, "/v1/merges"))["data"]] == [merge_id]
    peer = await new_user(app_client, tenant, password=PASSWORD)
    peer_h = await sign_in(user_api, tenant, peer["email"])
    assert (await get(app_client, peer_h, "/v1/merges"))["data"] == []
    assert_problem(await app_client.get(f"/v1/merges/{merge_id}", headers=peer_h), 404, "not-found")
    assert_problem(
        await app_client.post(f"/v1/merges/{merge_id}/undo", headers=peer_h), 404, "not-found"
    )
    assert_problem(
        await app_client.post(f"/v1/merges/{merge_id}/undo", headers=viewer_h), 403, "forbidden"
    )
    undone = await app_client.post(f"/v1/merges/{merge_id}/undo", headers=rep_h)
    assert undone.status_code == 200, undone.text


async def test_cross_tenant(
    app_client: httpx.AsyncClient, tenant: Tenant, intruder: Tenant
) -> None:
    h = tenant.headers
    x = await post(app_client, h, "/v1/contacts", last_name="Mine")
    y = await post(app_client, h, "/v1/contacts", last_name="Mine too")
    done = await app_client.post(
        "/v1/contacts/merge", json={"survivor_id": x["id"], "merged_ids": [y["id"]]}, headers=h
    )
    assert done.status_code == 201, done.text
    merge_id = done.json()["merge_id"]
    z = await post(app_client, h, "/v1/contacts", last_name="Still mine")
    own = await post(app_client, intruder.headers, "/v1/contacts", last_name="Theirs")
    for body in (
        {"survivor_id": x["id"], "merged_ids": [z["id"]]},
        {"survivor_id": own["id"], "merged_ids": [z["id"]]},
        {"survivor_id": x["id"], "merged_ids": [own["id"]]},
    ):
        resp = await app_client.post("/v1/contacts/merge", json=body, headers=intruder.headers)
        assert_problem(resp, 404, "not-found")
    for method, path in (
        ("GET", f"/v1/merges/{merge_id}"),
        ("POST", f"/v1/merges/{merge_id}/undo"),
        ("GET", f"/v1/contacts/{x['id']}/duplicates"),
    ):
        resp = await app_client.request(method, path, headers=intruder.headers)
        assert_problem(resp, 404, "not-found")
    assert (await get(app_client, intruder.headers, "/v1/merges"))["data"] == []
    assert (await app_client.get(f"/v1/contacts/{z['id']}", headers=h)).status_code == 200
