"""Record scope by reporting line and shares, through the request flows
(``meridian.crud.endpoints``) with the actor a user token would resolve to.

The property test checks, for random hierarchies, ownerships and shares, that opening a
record succeeds exactly when the record is in the user's (paginated) list, and that
both agree with a model computed here from the hierarchy.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meridian.accounts.repository import SORTABLE as ACCOUNT_SORTS
from meridian.accounts.repository import AccountRepository
from meridian.activities.repository import SORTABLE as ACTIVITY_SORTS
from meridian.activities.repository import ActivityRepository
from meridian.contacts.repository import SORTABLE as CONTACT_SORTS
from meridian.contacts.repository import ContactRepository
from meridian.contacts.schemas import ContactCreate
from meridian.contacts.service import contact as contact_service
from meridian.crud import endpoints
from meridian.crud.pagination import parse_sort
from meridian.crud.repository import TenantRepository
from meridian.deps import TenantAccess
from meridian.errors import NotFound
from meridian.opportunities.repository import SORTABLE as OPPORTUNITY_SORTS
from meridian.opportunities.repository import OpportunityRepository
from tests.fixtures.api import Tenant
from tests.fixtures.users import access_for, get_request, new_user_id

REPOS: dict[str, tuple[type[TenantRepository[Any]], Any, str]] = {
    "account": (AccountRepository, ACCOUNT_SORTS, "accounts"),
    "contact": (ContactRepository, CONTACT_SORTS, "contacts"),
    "opportunity": (OpportunityRepository, OPPORTUNITY_SORTS, "opportunities"),
    "activity": (ActivityRepository, ACTIVITY_SORTS, "activities"),
}


# -- what a user sees, through the request flows ---------------------------------------
async def listed(access: TenantAccess, kind: str, limit: int = 7) -> list[str]:
    """Every id of the user's list, page by page."""
    repo, sorts, _ = REPOS[kind]
    default = "-occurred_at" if kind == "activity" else "created_at"
    found: list[str] = []
    cursor = None
    while True:
        resp = await endpoints.listing(
            access,
            repo,
            where=[],
            filters={},
            sort=parse_sort(None, sorts, default),
            limit=limit,
            cursor=cursor,
        )
        body = orjson.loads(resp.body)
        found += [row["id"] for row in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return found


async def opens(access: TenantAccess, kind: str, record_id: str) -> bool:
    repo = REPOS[kind][0]
    try:
        resp = await endpoints.fetch(access, repo, kind, uuid.UUID(record_id), None)
    except NotFound:
        return False
    assert resp.status_code == 200
    return True


async def post(client: httpx.AsyncClient, tenant: Tenant, path: str, **body: Any) -> str:
    resp = await client.post(path, json=body, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    record_id: str = resp.json()["id"]
    return record_id


async def move(client: httpx.AsyncClient, tenant: Tenant, user: str, manager: str | None) -> None:
    resp = await client.patch(
        f"/v1/users/{user}", json={"manager_id": manager}, headers=tenant.headers
    )
    assert resp.status_code == 200, resp.text


async def share(
    client: httpx.AsyncClient, tenant: Tenant, kind: str, record_id: str, **grantee: str
) -> str:
    plural = REPOS[kind][2]
    return await post(client, tenant, f"/v1/{plural}/{record_id}/shares", **grantee)


# -- the examples of the issue -------------------------------------------------------------
@dataclass
class Team:
    """director <- manager <- (rep, peer); manager2 <- rep2 (another line)."""

    director: str
    manager: str
    rep: str
    peer: str
    manager2: str
    rep2: str
    records: dict[str, str] = field(default_factory=dict)  # owner name -> contact id


async def make_team(client: httpx.AsyncClient, tenant: Tenant) -> Team:
    director = await new_user_id(client, tenant, role="sales_manager")
    manager = await new_user_id(client, tenant, role="sales_manager", manager_id=director)
    rep = await new_user_id(client, tenant, manager_id=manager)
    peer = await new_user_id(client, tenant, manager_id=manager)
    manager2 = await new_user_id(client, tenant, role="sales_manager")
    rep2 = await new_user_id(client, tenant, manager_id=manager2)
    team = Team(director, manager, rep, peer, manager2, rep2)
    for name in ("director", "manager", "rep", "peer", "manager2", "rep2"):
        owner = getattr(team, name)
        team.records[name] = await post(
            client, tenant, "/v1/contacts", last_name=name, owner_id=owner
        )
    return team


async def test_a_rep_cannot_see_a_peers_records(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    team = await make_team(app_client, tenant)
    rep = await access_for(app_client, tenant, team.rep)
    assert await listed(rep, "contact") == [team.records["rep"]]
    assert await opens(rep, "contact", team.records["rep"])
    for other in ("peer", "manager", "director", "rep2"):
        assert not await opens(rep, "contact", team.records[other])


async def test_a_manager_sees_reports_two_levels_down(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    team = await make_team(app_client, tenant)
    director = await access_for(app_client, tenant, team.director)
    mine = {team.records[n] for n in ("director", "manager", "rep", "peer")}
    assert set(await listed(director, "contact")) == mine
    for name, record in team.records.items():
        assert await opens(director, "contact", record) == (record in mine), name


async def test_admins_and_clients_see_everything(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    team = await make_team(app_client, tenant)
    unowned = await post(app_client, tenant, "/v1/contacts", last_name="nobody's")
    admin_id = await new_user_id(app_client, tenant, role="admin")
    everything = {*team.records.values(), unowned}
    for who in (admin_id, None):
        access = await access_for(app_client, tenant, who)
        assert set(await listed(access, "contact")) == everything
        assert await opens(access, "contact", unowned)


async def test_moving_a_user_changes_visibility_at_once(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    team = await make_team(app_client, tenant)
    rep_record = team.records["rep"]
    admin = await access_for(app_client, tenant, None)
    manager = await access_for(app_client, tenant, team.manager)
    manager2 = await access_for(app_client, tenant, team.manager2)
    # Cached copies exist (an admin's reads fill the shared caches): they must not leak.
    assert await opens(admin, "contact", rep_record)
    assert rep_record in await listed(admin, "contact")
    assert await opens(manager, "contact", rep_record)
    assert not await opens(manager2, "contact", rep_record)

    await move(app_client, tenant, team.rep, team.manager2)
    assert not await opens(manager, "contact", rep_record)
    assert rep_record not in await listed(manager, "contact")
    assert await opens(manager2, "contact", rep_record)
    assert rep_record in await listed(manager2, "contact")
    # Moving a manager moves their whole line.
    await move(app_client, tenant, team.manager2, team.director)
    director = await access_for(app_client, tenant, team.director)
    assert await opens(director, "contact", rep_record)
    assert await opens(director, "contact", team.records["rep2"])


async def test_scoped_writes_of_invisible_records_are_404(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    team = await make_team(app_client, tenant)
    rep = await access_for(app_client, tenant, team.rep)
    peer_record = uuid.UUID(team.records["peer"])

    async def rename(session: Any, version: int | None) -> dict[str, Any] | None:
        raise AssertionError("the change must not run for an invisible record")

    with pytest.raises(NotFound):
        await endpoints.change(rep, "contact", peer_record, None, rename)
    with pytest.raises(NotFound):
        # Whatever the ETag: a stale one must not reveal that the record exists.
        await endpoints.remove(rep, ContactRepository, "contact", peer_record, '"7"')
    admin = await access_for(app_client, tenant, None)
    assert await opens(admin, "contact", str(peer_record))
    # Their own record they may delete.
    own = uuid.UUID(team.records["rep"])
    assert (await endpoints.remove(rep, ContactRepository, "contact", own, None)).status_code == 204


async def test_unowned_records_are_visible_to_unscoped_actors_only(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    rep_id = await new_user_id(app_client, tenant)
    unowned = await post(app_client, tenant, "/v1/accounts", name="Nobody's")
    rep = await access_for(app_client, tenant, rep_id)
    assert not await opens(rep, "account", unowned)
    assert unowned not in await listed(rep, "account")


async def test_activities_are_scoped_by_owner(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    boss = await new_user_id(app_client, tenant, role="sales_manager")
    rep = await new_user_id(app_client, tenant, manager_id=boss)
    peer = await new_user_id(app_client, tenant, manager_id=boss)
    account = await post(app_client, tenant, "/v1/accounts", name="Acme", owner_id=boss)
    when = "2026-01-01T10:00:00+00:00"
    mine = await post(
        app_client,
        tenant,
        "/v1/activities",
        type="call",
        subject="s",
        occurred_at=when,
        account_id=account,
        owner_id=rep,
    )
    theirs = await post(
        app_client,
        tenant,
        "/v1/activities",
        type="call",
        subject="s",
        occurred_at=when,
        account_id=account,
        owner_id=peer,
    )
    assert await listed(await access_for(app_client, tenant, rep), "activity") == [mine]
    assert set(await listed(await access_for(app_client, tenant, boss), "activity")) == {
        mine,
        theirs,
    }


async def test_a_users_new_record_is_theirs(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    rep_id = await new_user_id(app_client, tenant)
    rep = await access_for(app_client, tenant, rep_id)
    body = ContactCreate(last_name="Mine")
    resp = await endpoints.create(
        rep,
        get_request("/v1/contacts"),
        None,
        body,
        lambda session: contact_service.create(session, rep.tenant, body, rep.runtime.keyring),
        kind="contact",
    )
    created = orjson.loads(resp.body)
    assert created["owner_id"] == rep_id
    assert await opens(rep, "contact", created["id"])


# -- the property ----------------------------------------------------------------------------
MAX_DEPTH = 5


@st.composite
def worlds(draw: st.DrawFn) -> dict[str, Any]:
    """A forest of users (parents before children, depth <= MAX_DEPTH), records of two
    shareable kinds with random owners (or none), and random shares."""
    n = draw(st.integers(min_value=1, max_value=12))
    parents: list[int | None] = []
    depth: list[int] = []
    for i in range(n):
        choices = [None, *(j for j in range(i) if depth[j] < MAX_DEPTH - 1)]
        parent = draw(st.sampled_from(choices))
        parents.append(parent)
        depth.append(0 if parent is None else depth[parent] + 1)
    owner = st.one_of(st.none(), st.integers(0, n - 1))
    records = draw(st.lists(st.tuples(st.sampled_from(["contact", "account"]), owner), max_size=10))
    shares: list[tuple[int, str, int]] = []
    if records:
        shares = draw(
            st.lists(
                st.tuples(
                    st.integers(0, len(records) - 1),
                    st.sampled_from(["user_id", "team_id"]),
                    st.integers(0, n - 1),
                ),
                max_size=6,
                unique_by=lambda s: s,
            )
        )
    moves = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=2))
    return {"parents": parents, "records": records, "shares": shares, "moves": moves}


def subtree(parents: list[int | None], root: int) -> set[int]:
    """``root`` and everyone below it."""
    below = {root}
    changed = True
    while changed:
        changed = False
        for user, parent in enumerate(parents):
            if parent in below and user not in below:
                below.add(user)
                changed = True
    return below


def model(world: dict[str, Any], parents: list[int | None], user: int) -> set[int]:
    """Indices of the records ``user`` may see, from first principles."""
    mine = subtree(parents, user)
    teams = {t for t in range(len(parents)) if user in subtree(parents, t)}
    visible = {i for i, (_, owner) in enumerate(world["records"]) if owner in mine}
    for record, grantee_kind, grantee in world["shares"]:
        if (grantee_kind == "user_id" and grantee == user) or (
            grantee_kind == "team_id" and grantee in teams
        ):
            visible.add(record)
    return visible


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(world=worlds())
async def test_opening_a_record_agrees_with_the_list(
    app_client: httpx.AsyncClient, tenant: Tenant, world: dict[str, Any]
) -> None:
    # Every example makes new users and records in the same tenant; earlier examples'
    # records belong to earlier users, so they must stay out of these users' lists.
    parents: list[int | None] = list(world["parents"])
    users: list[str] = []
    for parent in parents:
        manager = users[parent] if parent is not None else None
        users.append(await new_user_id(app_client, tenant, manager_id=manager))
    records: list[tuple[str, str]] = []
    for kind, owner in world["records"]:
        owner_id = users[owner] if owner is not None else None
        body = {"last_name": "P"} if kind == "contact" else {"name": "P"}
        path = "/v1/contacts" if kind == "contact" else "/v1/accounts"
        records.append((kind, await post(app_client, tenant, path, owner_id=owner_id, **body)))
    for record, grantee_kind, grantee in world["shares"]:
        kind, record_id = records[record]
        await share(app_client, tenant, kind, record_id, **{grantee_kind: users[grantee]})

    async def check() -> None:
        for index, user in enumerate(users):
            access = await access_for(app_client, tenant, user)
            expected = model(world, parents, index)
            for kind in ("contact", "account"):
                in_list = set(await listed(access, kind, limit=3))
                for i, (record_kind, record_id) in enumerate(records):
                    if record_kind != kind:
                        continue
                    opened = await opens(access, kind, record_id)
                    assert opened == (record_id in in_list), (index, i)
                    assert opened == (i in expected), (index, i, parents, world)
                # Nothing beyond this example's records, whatever came before.
                assert in_list <= {r for k, r in records if k == kind}

    await check()
    # Moves (those that keep a forest) change what everyone sees, at once.
    for user, manager in world["moves"]:
        if manager in subtree(parents, user):  # would be a cycle: refused (see users)
            continue
        await move(app_client, tenant, users[user], users[manager])
        parents[user] = manager
    await check()
