"""Roles as users hold them: signed-in users (password grant) act with their role."""

from __future__ import annotations

import httpx

from tests.fixtures.api import Tenant
from tests.oauth.conftest import bearer, make_user, sign_in
from tests.roles.helpers import permissions
from tests.roles.test_router import assert_problem, roles_of


async def user_headers(client: httpx.AsyncClient, tenant: Tenant, role: str) -> dict[str, str]:
    user = await make_user(client, tenant, role=role)
    return bearer((await sign_in(client, user))["access_token"])


async def test_a_sales_rep_user_cannot_edit_roles_and_nothing_changes(
    users_client: httpx.AsyncClient, users_tenant: Tenant
) -> None:
    rep = await user_headers(users_client, users_tenant, "sales_rep")
    before = await roles_of(users_client, users_tenant)
    attempts = [
        ("POST", "/v1/roles", {"name": "rep_boss", "inherits": "admin"}),
        ("PATCH", "/v1/roles/sales_rep", {"description": "mine now"}),
        (
            "PUT",
            "/v1/roles/sales_rep/permissions",
            {"permissions": permissions(("roles", "update"))},
        ),
        ("DELETE", "/v1/roles/support_agent/permissions", None),
    ]
    for method, path, body in attempts:
        resp = await users_client.request(method, path, json=body, headers=rep)
        assert assert_problem(resp, 403, "forbidden")["object"] == "roles"
    # Nor can the rep make itself an admin through the users API.
    me = await users_client.post(
        "/v1/users",
        json={"email": "boss@example.com", "name": "Boss", "role": "admin", "password": "x" * 12},
        headers=rep,
    )
    assert_problem(me, 403, "forbidden")
    assert await roles_of(users_client, users_tenant) == before
    assert (await users_client.get("/v1/contacts", headers=rep)).status_code == 200


async def test_a_user_with_a_custom_role_gets_the_base_role_and_the_extra(
    users_client: httpx.AsyncClient, users_tenant: Tenant
) -> None:
    made = await users_client.post(
        "/v1/roles",
        json={
            "name": "lead_rep",
            "inherits": "sales_rep",
            "permissions": permissions(("users", "create")),
        },
        headers=users_tenant.headers,
    )
    assert made.status_code == 201, made.text
    lead = await user_headers(users_client, users_tenant, "lead_rep")
    assert (await users_client.get("/v1/contacts", headers=lead)).status_code == 200
    assert_problem(await users_client.get("/v1/roles", headers=lead), 403, "forbidden")
    # Once an admin grants roles:read to the role, the signed-in user has it at once.
    grant = await users_client.put(
        "/v1/roles/lead_rep/permissions",
        json={"permissions": permissions(("users", "create"), ("roles", "read"))},
        headers=users_tenant.headers,
    )
    assert grant.status_code == 200, grant.text
    assert (await users_client.get("/v1/roles", headers=lead)).status_code == 200


async def test_a_user_of_a_suspended_tenant_is_refused(
    users_client: httpx.AsyncClient, users_tenant: Tenant, admin_headers: dict[str, str]
) -> None:
    admin_user = await user_headers(users_client, users_tenant, "admin")
    assert (await users_client.get("/v1/roles", headers=admin_user)).status_code == 200
    before = await roles_of(users_client, users_tenant)
    suspended = await users_client.post(
        f"/admin/v1/tenants/{users_tenant.id}/suspend", headers=admin_headers
    )
    assert suspended.status_code == 200, suspended.text
    try:
        assert_problem(
            await users_client.get("/v1/contacts", headers=admin_user), 403, "tenant-suspended"
        )
        assert_problem(
            await users_client.post("/v1/roles", json={"name": "late_role"}, headers=admin_user),
            403,
            "tenant-suspended",
        )
        assert_problem(
            await users_client.put(
                "/v1/roles/read_only/permissions", json={"permissions": []}, headers=admin_user
            ),
            403,
            "tenant-suspended",
        )
    finally:
        resumed = await users_client.post(
            f"/admin/v1/tenants/{users_tenant.id}/resume", headers=admin_headers
        )
        assert resumed.status_code == 200
    assert await roles_of(users_client, users_tenant) == before
