"""/v1/roles and the role templates as the API enforces them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from authz.policy import TEMPLATES
from tests.fixtures.api import Tenant
from tests.fixtures.problems import assert_problem
from tests.roles.helpers import as_pairs, permissions, role_headers


async def roles_of(client: httpx.AsyncClient, tenant: Tenant) -> dict[str, dict[str, Any]]:
    resp = await client.get("/v1/roles", headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    return {r["name"]: r for r in resp.json()["data"]}


async def test_every_template_is_listed_with_its_permissions(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    roles = await roles_of(app_client, tenant)
    assert set(roles) == set(TEMPLATES)
    for name, granted in TEMPLATES.items():
        role = roles[name]
        assert role["kind"] == "template"
        assert not role["overridden"]
        assert as_pairs(role["permissions"]) == set(granted)
        assert as_pairs(role["effective_permissions"]) == set(granted)
    one = await app_client.get("/v1/roles/sales_rep", headers=tenant.headers)
    assert one.status_code == 200
    assert one.headers["etag"] == f'"{one.json()["policy_version"]}"'
    again = await app_client.get(
        "/v1/roles/sales_rep", headers={**tenant.headers, "If-None-Match": one.headers["etag"]}
    )
    assert again.status_code == 304


async def test_read_only_reads_but_cannot_write_and_sees_masked_pii(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    made = await app_client.post(
        "/v1/contacts",
        json={"last_name": "Doe", "email": "jane.doe@example.com", "phone": "+1 415 555 1234"},
        headers=tenant.headers,
    )
    assert made.status_code == 201, made.text
    contact = made.json()
    assert contact["email"] == "jane.doe@example.com"  # the admin holds pii:read
    reader = await role_headers(app_client, tenant, "read_only")

    for _ in range(2):  # the second read comes from the cache: still masked
        got = await app_client.get(f"/v1/contacts/{contact['id']}", headers=reader)
        assert got.status_code == 200, got.text
        assert got.json()["email"] == "j***@example.com"
        assert got.json()["phone"] == "***-***-1234"
        assert got.json()["last_name"] == "Doe"
    # The cached row was not masked in place for everyone.
    clear = await app_client.get(f"/v1/contacts/{contact['id']}", headers=tenant.headers)
    assert clear.json()["email"] == "jane.doe@example.com"

    page = await app_client.get("/v1/contacts", headers=reader)
    assert page.status_code == 200
    assert {c["email"] for c in page.json()["data"]} == {"j***@example.com"}
    # Filtering on a masked field would reveal it.
    probe = await app_client.get("/v1/contacts?email=jane.doe@example.com", headers=reader)
    assert_problem(probe, 403, "forbidden")

    denied = await app_client.post("/v1/contacts", json={"last_name": "X"}, headers=reader)
    body = assert_problem(denied, 403, "forbidden")
    assert (body["object"], body["action"]) == ("contacts", "create")
    assert "contacts" in body["detail"]
    assert "create" in body["detail"]
    assert_problem(
        await app_client.patch(
            f"/v1/contacts/{contact['id']}", json={"last_name": "Y"}, headers=reader
        ),
        403,
        "forbidden",
    )
    assert_problem(
        await app_client.delete(f"/v1/contacts/{contact['id']}", headers=reader), 403, "forbidden"
    )
    assert_problem(await app_client.get("/v1/roles", headers=reader), 403, "forbidden")
    unchanged = await app_client.get(f"/v1/contacts/{contact['id']}", headers=tenant.headers)
    assert unchanged.json()["version"] == contact["version"]


async def test_support_agent_updates_contacts_but_does_not_delete_them(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    contact = (
        await app_client.post(
            "/v1/contacts",
            json={"last_name": "Roe", "email": "r@example.com"},
            headers=tenant.headers,
        )
    ).json()
    agent = await role_headers(app_client, tenant, "support_agent")
    changed = await app_client.patch(
        f"/v1/contacts/{contact['id']}", json={"title": "CTO"}, headers=agent
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["email"] == "r@example.com"  # support agents hold pii:read
    assert_problem(
        await app_client.delete(f"/v1/contacts/{contact['id']}", headers=agent), 403, "forbidden"
    )
    activity = await app_client.post(
        "/v1/activities",
        json={
            "type": "call",
            "subject": "called",
            "occurred_at": "2026-01-02T03:04:05Z",
            "contact_id": contact["id"],
        },
        headers=agent,
    )
    assert activity.status_code == 201, activity.text


async def test_sales_rep_cannot_edit_roles_or_policies(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    before = await roles_of(app_client, tenant)
    rep = await role_headers(app_client, tenant, "sales_rep")
    version = before["sales_rep"]["policy_version"]
    attempts = [
        ("POST", "/v1/roles", {"name": "sneaky", "permissions": permissions(("roles", "update"))}),
        ("PATCH", "/v1/roles/sales_rep", {"description": "mine"}),
        (
            "PUT",
            "/v1/roles/sales_rep/permissions",
            {"permissions": permissions(("roles", "update"), ("roles", "create"))},
        ),
        ("DELETE", "/v1/roles/sales_rep/permissions", None),
        ("DELETE", "/v1/roles/read_only", None),
        ("GET", "/v1/roles", None),
    ]
    for method, path, body in attempts:
        resp = await app_client.request(method, path, json=body, headers=rep)
        problem = assert_problem(resp, 403, "forbidden")
        assert problem["object"] == "roles", (method, path)
    # Nothing changed: same roles, same permissions, same policy version.
    after = await roles_of(app_client, tenant)
    assert after == before
    assert after["sales_rep"]["policy_version"] == version
    # The rep still does its own job.
    assert (await app_client.get("/v1/contacts", headers=rep)).status_code == 200


async def test_custom_role_inherits_a_template_and_adds_a_permission(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    created = await app_client.post(
        "/v1/roles",
        json={
            "name": "senior_rep",
            "inherits": "sales_rep",
            "permissions": permissions(("roles", "read")),
            "description": "A rep who may look at the roles",
        },
        headers=tenant.headers,
    )
    assert created.status_code == 201, created.text
    role = created.json()
    assert created.headers["location"].endswith("/v1/roles/senior_rep")
    assert created.headers["etag"] == f'"{role["policy_version"]}"'
    assert role["kind"] == "custom"
    assert role["inherits"] == "sales_rep"
    assert as_pairs(role["permissions"]) == {("roles", "read")}
    assert as_pairs(role["effective_permissions"]) == set(TEMPLATES["sales_rep"]) | {
        ("roles", "read")
    }

    senior = await role_headers(app_client, tenant, "senior_rep")
    assert (await app_client.get("/v1/roles", headers=senior)).status_code == 200  # its own
    assert (await app_client.get("/v1/contacts", headers=senior)).status_code == 200  # inherited
    made = await app_client.post("/v1/accounts", json={"name": "Acme"}, headers=senior)
    assert made.status_code == 201, made.text
    assert_problem(
        await app_client.post("/v1/roles", json={"name": "x_role"}, headers=senior),
        403,
        "forbidden",
    )
    # The role exists in its tenant only.
    assert_problem(
        await app_client.get("/v1/roles/senior_rep", headers=other_tenant.headers),
        404,
        "not-found",
    )


async def test_template_override_stays_in_its_tenant(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    reader_a = await role_headers(app_client, tenant, "read_only")
    reader_b = await role_headers(app_client, other_tenant, "read_only")
    assert (await app_client.get("/v1/contacts", headers=reader_a)).status_code == 200

    put = await app_client.put(
        "/v1/roles/read_only/permissions",
        json={"permissions": permissions(("accounts", "read"))},
        headers=tenant.headers,
    )
    assert put.status_code == 200, put.text
    assert put.json()["overridden"] is True
    assert as_pairs(put.json()["effective_permissions"]) == {("accounts", "read")}
    # Applied at once on this instance, to this tenant only.
    assert_problem(await app_client.get("/v1/contacts", headers=reader_a), 403, "forbidden")
    assert (await app_client.get("/v1/accounts", headers=reader_a)).status_code == 200
    assert (await app_client.get("/v1/contacts", headers=reader_b)).status_code == 200
    in_b = (await roles_of(app_client, other_tenant))["read_only"]
    assert not in_b["overridden"]
    assert as_pairs(in_b["permissions"]) == set(TEMPLATES["read_only"])

    reset = await app_client.delete("/v1/roles/read_only/permissions", headers=tenant.headers)
    assert reset.status_code == 200, reset.text
    assert reset.json()["overridden"] is False
    assert (await app_client.get("/v1/contacts", headers=reader_a)).status_code == 200


async def test_custom_role_change_and_delete(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    made = await app_client.post(
        "/v1/roles",
        json={"name": "auditor", "permissions": permissions(("accounts", "read"))},
        headers=tenant.headers,
    )
    assert made.status_code == 201, made.text
    etag = made.headers["etag"]
    auditor = await role_headers(app_client, tenant, "auditor", scope="crm:read")
    assert_problem(await app_client.get("/v1/contacts", headers=auditor), 403, "forbidden")

    patched = await app_client.patch(
        "/v1/roles/auditor",
        json={"inherits": "read_only", "description": "reads everything"},
        headers={**tenant.headers, "If-Match": etag},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["inherits"] == "read_only"
    assert patched.json()["description"] == "reads everything"
    assert (await app_client.get("/v1/contacts", headers=auditor)).status_code == 200
    stale = await app_client.patch(
        "/v1/roles/auditor", json={"inherits": None}, headers={**tenant.headers, "If-Match": etag}
    )
    assert_problem(stale, 412, "precondition-failed")

    # A client still acts with it: deleting it would strand the client.
    assert_problem(
        await app_client.delete("/v1/roles/auditor", headers=tenant.headers), 409, "conflict"
    )
    unused = await app_client.post(
        "/v1/roles", json={"name": "temp_role", "inherits": "auditor"}, headers=tenant.headers
    )
    assert unused.status_code == 201
    # auditor is inherited by temp_role now.
    assert_problem(
        await app_client.delete("/v1/roles/auditor", headers=tenant.headers), 409, "conflict"
    )
    gone = await app_client.delete("/v1/roles/temp_role", headers=tenant.headers)
    assert gone.status_code == 204
    assert_problem(
        await app_client.get("/v1/roles/temp_role", headers=tenant.headers), 404, "not-found"
    )


@pytest.mark.parametrize(
    ("body", "status", "slug"),
    [
        ({"name": "x_role", "permissions": permissions(("invoices", "read"))}, 422, "validation"),
        ({"name": "x_role", "permissions": permissions(("pii", "update"))}, 422, "validation"),
        ({"name": "x_role", "permissions": permissions(("records", "delete"))}, 422, "validation"),
        (
            {"name": "x_role", "permissions": permissions(("users", "read"), ("users", "read"))},
            422,
            "validation",
        ),
        ({"name": "Bad Name"}, 422, "validation"),
        ({"name": "x_role", "inherits": "nobody"}, 422, "validation"),
        ({"name": "x_role", "extra": 1}, 422, "validation"),
        ({"name": "sales_rep"}, 409, "conflict"),
    ],
)
async def test_invalid_roles_are_refused(
    app_client: httpx.AsyncClient,
    tenant: Tenant,
    body: dict[str, Any],
    status: int,
    slug: str,
) -> None:
    before = await roles_of(app_client, tenant)
    resp = await app_client.post("/v1/roles", json=body, headers=tenant.headers)
    assert_problem(resp, status, slug)
    assert await roles_of(app_client, tenant) == before


async def test_templates_are_not_patched_or_deleted_and_admin_is_fixed(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    assert_problem(
        await app_client.patch("/v1/roles/sales_rep", json={"description": "x"}, headers=h),
        409,
        "conflict",
    )
    assert_problem(await app_client.delete("/v1/roles/sales_rep", headers=h), 409, "conflict")
    assert_problem(
        await app_client.put("/v1/roles/admin/permissions", json={"permissions": []}, headers=h),
        409,
        "conflict",
    )
    assert_problem(
        await app_client.put("/v1/roles/nobody/permissions", json={"permissions": []}, headers=h),
        404,
        "not-found",
    )


async def test_inheritance_cycles_are_refused(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    assert (
        await app_client.post("/v1/roles", json={"name": "c_one"}, headers=h)
    ).status_code == 201
    two = await app_client.post("/v1/roles", json={"name": "c_two", "inherits": "c_one"}, headers=h)
    assert two.status_code == 201
    cycle = await app_client.patch("/v1/roles/c_one", json={"inherits": "c_two"}, headers=h)
    assert_problem(cycle, 409, "conflict")
    assert (await app_client.get("/v1/roles/c_one", headers=h)).json()["inherits"] is None


async def test_nobody_grants_what_they_do_not_hold(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    made = await app_client.post(
        "/v1/roles",
        json={
            "name": "role_keeper",
            "permissions": permissions(("roles", "read"), ("roles", "create")),
        },
        headers=tenant.headers,
    )
    assert made.status_code == 201, made.text
    keeper = await role_headers(app_client, tenant, "role_keeper")
    escalate = await app_client.post(
        "/v1/roles",
        json={"name": "keeper_plus", "permissions": permissions(("records", "read_all"))},
        headers=keeper,
    )
    assert_problem(escalate, 403, "forbidden")
    via_parent = await app_client.post(
        "/v1/roles", json={"name": "keeper_plus", "inherits": "admin"}, headers=keeper
    )
    assert_problem(via_parent, 403, "forbidden")
    fine = await app_client.post(
        "/v1/roles",
        json={"name": "keeper_plus", "permissions": permissions(("roles", "read"))},
        headers=keeper,
    )
    assert fine.status_code == 201, fine.text


async def test_create_with_idempotency_key_replays(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "role-1"}
    body = {"name": "replayed", "permissions": permissions(("users", "read"))}
    first = await app_client.post("/v1/roles", json=body, headers=headers)
    assert first.status_code == 201
    again = await app_client.post("/v1/roles", json=body, headers=headers)
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    other = await app_client.post("/v1/roles", json={"name": "another"}, headers=headers)
    assert_problem(other, 422, "idempotency-key-reused")


async def test_roles_api_needs_the_write_scope_to_change(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    # An admin-role client whose token only has crm:read.
    reader_admin = await role_headers(app_client, tenant, "admin", scope="crm:read")
    assert (await app_client.get("/v1/roles", headers=reader_admin)).status_code == 200
    resp = await app_client.post("/v1/roles", json={"name": "nope_role"}, headers=reader_admin)
    assert_problem(resp, 403, "insufficient-scope")


async def test_user_of_a_suspended_tenant_is_refused(
    app_client: httpx.AsyncClient, admin_headers: dict[str, str], tenant: Tenant
) -> None:
    rep = await role_headers(app_client, tenant, "sales_rep")
    before = await roles_of(app_client, tenant)
    suspended = await app_client.post(
        f"/admin/v1/tenants/{tenant.id}/suspend", headers=admin_headers
    )
    assert suspended.status_code == 200, suspended.text
    try:
        for headers in (rep, tenant.headers):
            assert_problem(
                await app_client.get("/v1/contacts", headers=headers), 403, "tenant-suspended"
            )
            assert_problem(
                await app_client.post("/v1/accounts", json={"name": "x"}, headers=headers),
                403,
                "tenant-suspended",
            )
        assert_problem(
            await app_client.post("/v1/roles", json={"name": "late_role"}, headers=tenant.headers),
            403,
            "tenant-suspended",
        )
    finally:
        resumed = await app_client.post(
            f"/admin/v1/tenants/{tenant.id}/resume", headers=admin_headers
        )
        assert resumed.status_code == 200
    # Nothing was written while suspended.
    assert await roles_of(app_client, tenant) == before
    page = await app_client.get("/v1/accounts", headers=tenant.headers)
    assert all(a["name"] != "x" for a in page.json()["data"])
