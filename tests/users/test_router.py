"""The users API over a real shard: create/invite, list, read, change, deactivate, the
reporting-line closure kept in step, passwords, and isolation between tenants."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from meridian.users.passwords import verify_password
from tests.fixtures.api import Tenant
from tests.fixtures.closure import assert_closure_consistent, stored_closure
from tests.fixtures.problems import assert_problem
from tests.fixtures.shard_db import superuser
from tests.fixtures.users import PASSWORD, new_user, new_user_id, sign_in
from tests.fixtures.waiting import eventually

if TYPE_CHECKING:
    # Not at run time: pytest would try to collect the Test* class.
    from tests.fixtures.databases import TestDatabases


async def patch_user(
    client: httpx.AsyncClient, tenant: Tenant, user_id: str, **body: Any
) -> httpx.Response:
    return await client.patch(f"/v1/users/{user_id}", json=body, headers=tenant.headers)


async def stored_hash(databases: TestDatabases, tenant: Tenant, user_id: str) -> str | None:
    async with superuser(databases, tenant.shard_id) as conn:
        value: str | None = await conn.fetchval(
            "SELECT password_hash FROM app_user WHERE tenant_id = $1 AND id = $2",
            uuid.UUID(tenant.id),
            uuid.UUID(user_id),
        )
    return value


async def test_user_crud(
    app_client: httpx.AsyncClient, tenant: Tenant, databases: TestDatabases
) -> None:
    boss = await new_user(app_client, tenant, role="sales_manager")
    resp = await app_client.post(
        "/v1/users",
        json={
            "email": "  Grace.Hopper@Example.COM ",
            "name": " Grace Hopper ",
            "role": "sales_rep",
            "manager_id": boss["id"],
            "password": "  a long passphrase  ",
        },
        headers=tenant.headers,
    )
    assert resp.status_code == 201, resp.text
    user = resp.json()
    assert user["email"] == "grace.hopper@example.com"
    assert user["name"] == "Grace Hopper"
    assert user["role"] == "sales_rep"
    assert user["manager_id"] == boss["id"]
    assert user["active"] is True
    assert user["version"] == 1
    assert not {"password", "password_hash", "tenant_id"} & set(user)
    assert resp.headers["location"] == f"/v1/users/{user['id']}"
    assert resp.headers["etag"] == '"1"'

    encoded = await stored_hash(databases, tenant, user["id"])
    assert encoded is not None
    assert encoded.startswith("$argon2id$")
    # Taken exactly as sent: surrounding spaces are part of the password.
    assert verify_password("  a long passphrase  ", encoded)
    assert not verify_password("a long passphrase", encoded)

    got = await app_client.get(f"/v1/users/{user['id']}", headers=tenant.headers)
    assert got.status_code == 200
    assert got.json() == user

    changed = await app_client.patch(
        f"/v1/users/{user['id']}",
        json={"name": "Rear Admiral Hopper", "role": "sales_manager", "password": "new secret!"},
        headers={**tenant.headers, "If-Match": '"1"'},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["name"] == "Rear Admiral Hopper"
    assert changed.json()["role"] == "sales_manager"
    assert changed.json()["version"] == 2
    assert changed.headers["etag"] == '"2"'
    new_hash = await stored_hash(databases, tenant, user["id"])
    assert new_hash is not None
    assert verify_password("new secret!", new_hash)

    stale = await app_client.patch(
        f"/v1/users/{user['id']}",
        json={"name": "X"},
        headers={**tenant.headers, "If-Match": '"1"'},
    )
    assert_problem(stale, 412, "precondition-failed")

    cleared = await patch_user(app_client, tenant, user["id"], password=None)
    assert cleared.status_code == 200
    assert await stored_hash(databases, tenant, user["id"]) is None

    # No DELETE: users are deactivated, never deleted.
    gone = await app_client.delete(f"/v1/users/{user['id']}", headers=tenant.headers)
    assert_problem(gone, 405, "method-not-allowed")
    await assert_closure_consistent(databases, tenant)


async def test_invited_user_without_password(
    app_client: httpx.AsyncClient, tenant: Tenant, databases: TestDatabases
) -> None:
    user = await new_user(app_client, tenant)
    assert await stored_hash(databases, tenant, user["id"]) is None


async def test_email_is_unique_per_tenant(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    email = f"dup-{uuid.uuid4().hex[:8]}@example.test"
    await new_user(app_client, tenant, email=email)
    again = await app_client.post(
        "/v1/users",
        json={"email": email.upper(), "name": "Again", "role": "sales_rep"},
        headers=tenant.headers,
    )
    assert_problem(again, 409, "conflict")
    # Another tenant has its own users.
    await new_user(app_client, other_tenant, email=email)


async def test_concurrent_duplicates_one_wins(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    email = f"race-{uuid.uuid4().hex[:8]}@example.test"
    body = {"email": email, "name": "Race", "role": "sales_rep"}
    results = await asyncio.gather(
        *(app_client.post("/v1/users", json=body, headers=tenant.headers) for _ in range(4))
    )
    assert sorted(r.status_code for r in results) == [201, 409, 409, 409]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "nope", "name": "N", "role": "sales_rep"}, "email"),
        ({"email": "a@example.test", "name": "", "role": "sales_rep"}, "name"),
        ({"email": "a@example.test", "name": "N", "role": "Sales Rep"}, "role"),
        ({"email": "a@example.test", "name": "N", "role": "r" * 65}, "role"),
        (
            {"email": "a@example.test", "name": "N", "role": "sales_rep", "password": "short"},
            "password",
        ),
        (
            {"email": "a@example.test", "name": "N", "role": "sales_rep", "manager_id": "x"},
            "manager_id",
        ),
        ({"email": "a@example.test", "name": "N", "role": "sales_rep", "active": False}, "active"),
    ],
)
async def test_invalid_bodies(
    app_client: httpx.AsyncClient, tenant: Tenant, body: dict[str, Any], field: str
) -> None:
    resp = await app_client.post("/v1/users", json=body, headers=tenant.headers)
    assert_problem(resp, 422, "validation")
    assert field in str(resp.json()["errors"])


async def test_password_never_echoed(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    secret = "sh0rt"
    resp = await app_client.post(
        "/v1/users",
        json={"email": "p@example.test", "name": "P", "role": "sales_rep", "password": secret},
        headers=tenant.headers,
    )
    assert_problem(resp, 422, "validation")
    assert secret not in resp.text


async def test_nulls_refused(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    user_id = await new_user_id(app_client, tenant)
    for field in ("name", "role", "active"):
        assert_problem(
            await patch_user(app_client, tenant, user_id, **{field: None}), 422, "validation", field
        )


async def test_list_filters_and_pagination(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    boss = await new_user(app_client, tenant, role="sales_manager", name="Boss")
    reps = [
        await new_user(app_client, tenant, manager_id=boss["id"], name=f"Rep {i}") for i in range(5)
    ]
    await patch_user(app_client, tenant, reps[0]["id"], active=False)

    async def ids(**params: Any) -> list[str]:
        found: list[str] = []
        cursor = None
        while True:
            query = {**params, **({"cursor": cursor} if cursor else {})}
            resp = await app_client.get("/v1/users", params=query, headers=tenant.headers)
            assert resp.status_code == 200, resp.text
            found += [u["id"] for u in resp.json()["data"]]
            cursor = resp.json()["next_cursor"]
            if cursor is None:
                return found

    rep_ids = [r["id"] for r in reps]
    assert await ids(manager_id=boss["id"], limit=2) == rep_ids  # by name
    assert await ids(manager_id=boss["id"], active="true") == rep_ids[1:]
    assert await ids(manager_id=boss["id"], active="false") == rep_ids[:1]
    assert await ids(role="sales_manager") == [boss["id"]]
    assert await ids(email=reps[2]["email"].upper()) == [reps[2]["id"]]
    assert await ids(manager_id=boss["id"], sort="-created_at") == rep_ids[::-1]


async def test_manager_must_be_an_active_user_of_the_tenant(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    foreign = await new_user_id(app_client, other_tenant)
    gone = await new_user_id(app_client, tenant)
    assert (await patch_user(app_client, tenant, gone, active=False)).status_code == 200
    for manager in (foreign, gone, str(uuid.uuid4())):
        resp = await app_client.post(
            "/v1/users",
            json={
                "email": f"{uuid.uuid4().hex[:8]}@x.test",
                "name": "N",
                "role": "sales_rep",
                "manager_id": manager,
            },
            headers=tenant.headers,
        )
        assert_problem(resp, 422, "validation", "manager_id")
        user_id = await new_user_id(app_client, tenant)
        assert_problem(
            await patch_user(app_client, tenant, user_id, manager_id=manager), 422, "validation"
        )


async def test_cycles_are_refused(
    app_client: httpx.AsyncClient, tenant: Tenant, databases: TestDatabases
) -> None:
    top = await new_user_id(app_client, tenant, role="sales_manager")
    mid = await new_user_id(app_client, tenant, manager_id=top)
    low = await new_user_id(app_client, tenant, manager_id=mid)
    before = await stored_closure(databases, tenant)
    for user, manager in ((top, top), (top, mid), (top, low), (mid, low)):
        resp = await patch_user(app_client, tenant, user, manager_id=manager)
        assert_problem(resp, 409, "conflict", "manager_id")
    assert await stored_closure(databases, tenant) == before


async def test_moves_keep_the_closure(
    app_client: httpx.AsyncClient, tenant: Tenant, databases: TestDatabases
) -> None:
    a = await new_user_id(app_client, tenant)
    b = await new_user_id(app_client, tenant, manager_id=a)
    c = await new_user_id(app_client, tenant, manager_id=b)
    d = await new_user_id(app_client, tenant, manager_id=c)
    x = await new_user_id(app_client, tenant)
    y = await new_user_id(app_client, tenant, manager_id=x)
    await assert_closure_consistent(databases, tenant)
    # A subtree (c, d) moves under y; then b leaves the line; then a goes under d.
    for user, manager in ((c, y), (b, None), (a, d), (c, None), (x, a)):
        resp = await patch_user(app_client, tenant, user, manager_id=manager)
        assert resp.status_code == 200, resp.text
        assert resp.json()["manager_id"] == manager
        await assert_closure_consistent(databases, tenant)


async def test_concurrent_moves_never_corrupt_the_closure(
    app_client: httpx.AsyncClient, tenant: Tenant, databases: TestDatabases
) -> None:
    """Many moves at once, some of which would form cycles together: every committed
    state is a forest and the closure matches it (the hierarchy lock serialises them)."""
    users = [await new_user_id(app_client, tenant) for _ in range(8)]
    rng = random.Random(7)
    for _ in range(4):
        moves = [(rng.choice(users), rng.choice([None, *users])) for _ in range(12)]
        results = await asyncio.gather(
            *(patch_user(app_client, tenant, u, manager_id=m) for u, m in moves)
        )
        assert {r.status_code for r in results} <= {200, 409}, [r.text for r in results]
        await assert_closure_consistent(databases, tenant)


async def test_deactivation(
    app_client: httpx.AsyncClient, tenant: Tenant, databases: TestDatabases
) -> None:
    boss = await new_user_id(app_client, tenant, role="sales_manager")
    rep = await new_user_id(app_client, tenant, manager_id=boss)
    # A manager of active users stays until they have a new manager.
    assert_problem(
        await patch_user(app_client, tenant, boss, active=False), 409, "conflict", "active"
    )
    assert (await patch_user(app_client, tenant, rep, active=False)).status_code == 200
    assert (await patch_user(app_client, tenant, boss, active=False)).status_code == 200
    # Reactivating the report under a manager who has left is refused too.
    assert_problem(
        await patch_user(app_client, tenant, rep, active=True), 422, "validation", "manager_id"
    )
    resp = await patch_user(app_client, tenant, rep, active=True, manager_id=None)
    assert resp.status_code == 200, resp.text
    # A deactivated user can own nothing new.
    assert_problem(
        await app_client.post(
            "/v1/accounts", json={"name": "A", "owner_id": boss}, headers=tenant.headers
        ),
        422,
        "validation",
        "owner_id",
    )
    await assert_closure_consistent(databases, tenant)


async def test_tenants_never_list_or_reference_each_others_users(
    app_client: httpx.AsyncClient, tenant: Tenant, intruder: Tenant
) -> None:
    """By-id routes across tenants are tests/test_cross_tenant.py's."""
    user_id = await new_user_id(app_client, tenant)
    listed = await app_client.get("/v1/users", headers=intruder.headers)
    assert user_id not in {u["id"] for u in listed.json()["data"]}
    # Nor can one tenant's user be another tenant's record owner.
    resp = await app_client.post(
        "/v1/contacts", json={"last_name": "X", "owner_id": user_id}, headers=intruder.headers
    )
    assert_problem(resp, 422, "validation", "owner_id")


async def test_only_administrators_manage_users(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    rep = await new_user(app_client, tenant, password=PASSWORD)
    admin = await new_user(app_client, tenant, role="admin", password=PASSWORD)
    rep_headers = await sign_in(user_api, tenant, rep["email"])
    admin_headers = await sign_in(user_api, tenant, admin["email"])
    body = {"email": f"{uuid.uuid4().hex[:8]}@x.test", "name": "N", "role": "admin"}
    # A rep can read the directory but neither add users nor promote themselves.
    assert (await app_client.get("/v1/users", headers=rep_headers)).status_code == 200
    assert_problem(
        await app_client.post("/v1/users", json=body, headers=rep_headers), 403, "forbidden"
    )
    promote = await app_client.patch(
        f"/v1/users/{rep['id']}", json={"role": "admin"}, headers=rep_headers
    )
    assert_problem(promote, 403, "forbidden")
    made = await app_client.post("/v1/users", json=body, headers=admin_headers)
    assert made.status_code == 201, made.text


async def test_role_change_and_deactivation_apply_at_once(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    """The role and state behind a user token are cached per instance; a change applies
    on the next request on the instance that made it, and on every other instance once
    the invalidation has arrived there over pub/sub."""
    user = await new_user(app_client, tenant, role="admin", password=PASSWORD)
    headers = await sign_in(user_api, tenant, user["email"])
    # Adding a user whose email exists: 409 for an admin, 403 for anyone else, and
    # nothing is created either way, so it can be asked as often as needed.
    again = {"email": user["email"], "name": "N", "role": "sales_rep"}

    async def adding_status(client: httpx.AsyncClient) -> int:
        return (await client.post("/v1/users", json=again, headers=headers)).status_code

    for client in (app_client, user_api):  # warm both instances' caches
        assert await adding_status(client) == 409
    demoted = await patch_user(app_client, tenant, user["id"], role="sales_rep")
    assert demoted.status_code == 200
    assert_problem(
        await app_client.post("/v1/users", json=again, headers=headers), 403, "forbidden"
    )

    async def demoted_on_user_api() -> bool:
        status = await adding_status(user_api)
        assert status in {409, 403}, status
        return status == 403

    await eventually(demoted_on_user_api, what="the demotion reaching the other instance")
    assert_problem(await user_api.post("/v1/users", json=again, headers=headers), 403, "forbidden")

    assert (await patch_user(app_client, tenant, user["id"], active=False)).status_code == 200
    assert_problem(await app_client.get("/v1/users", headers=headers), 401, "unauthorized")

    async def refused_on_user_api() -> bool:
        status = (await user_api.get("/v1/users", headers=headers)).status_code
        assert status in {200, 401}, status
        return status == 401

    await eventually(refused_on_user_api, what="the deactivation reaching the other instance")
    assert_problem(await user_api.get("/v1/users", headers=headers), 401, "unauthorized")
