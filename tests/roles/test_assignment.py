"""Giving a user a role: the role must exist in the tenant (422 naming it) and grant
nothing the caller's own role lacks (403)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.roles.helpers import permissions, role_headers


def _user(role: str) -> dict[str, Any]:
    return {"email": f"{uuid.uuid4().hex[:10]}@example.com", "name": "New", "role": role}


async def test_an_unknown_role_is_422_naming_it(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    made = await app_client.post("/v1/users", json=_user("no_such_role"), headers=tenant.headers)
    problem = assert_problem(made, 422, "validation", "no_such_role")
    assert problem["errors"] == [
        {"loc": ["role"], "msg": "no role named 'no_such_role' in this tenant", "type": "not_found"}
    ]
    user = await app_client.post("/v1/users", json=_user("sales_rep"), headers=tenant.headers)
    assert user.status_code == 201, user.text
    url = f"/v1/users/{user.json()['id']}"
    renamed = await app_client.patch(url, json={"role": "ghost"}, headers=tenant.headers)
    assert_problem(renamed, 422, "validation", "ghost")
    assert (await app_client.get(url, headers=tenant.headers)).json()["role"] == "sales_rep"


async def test_nobody_hands_out_a_role_above_their_own(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    hiring = await app_client.post(
        "/v1/roles",
        json={
            "name": "hiring",
            "permissions": permissions(("users", "create"), ("users", "read")),
        },
        headers=tenant.headers,
    )
    assert hiring.status_code == 201, hiring.text
    recruiter = await role_headers(app_client, tenant, "hiring")
    above = await app_client.post("/v1/users", json=_user("admin"), headers=recruiter)
    assert_problem(above, 403, "forbidden", "admin")
    same = await app_client.post("/v1/users", json=_user("hiring"), headers=recruiter)
    assert same.status_code == 201, same.text
