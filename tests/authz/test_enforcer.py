"""The enforcer registry on the real policy store: templates, overrides, custom roles,
LRU eviction, swap on reload, memo invalidation, TTL revalidation, single-flight."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from authz import store as policy_store
from authz.enforcer import EnforcerRegistry, PolicyUnavailable, TenantPolicy
from authz.policy import (
    CATALOGUE,
    TEMPLATE_DOMAIN,
    TEMPLATES,
    Permission,
    PolicySnapshot,
    Rule,
    template_rules,
)
from authz.store import PolicyStore
from tests.authz.conftest import NewTenant

if TYPE_CHECKING:  # imported at run time, pytest would try to collect it as tests
    from tests.fixtures.databases import TestDatabases

ALL_PERMISSIONS = sorted((o, a) for o, acts in CATALOGUE.items() for a in acts)


class Clock:
    """A settable monotonic clock, so TTL behaviour is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def change(
    control: AsyncEngine,
    tenant_id: UUID,
    role: str,
    permissions: Iterable[Permission],
    *,
    kind: str = "custom",
    parent: str | None = None,
) -> int:
    """A policy change as the roles API makes it: locked, written, version bumped."""
    async with control.begin() as conn:
        await policy_store.lock_policy(conn, tenant_id)
        await policy_store.put_role(conn, tenant_id, role, kind)
        await policy_store.set_permissions(conn, tenant_id, role, permissions)
        if kind == "custom":
            await policy_store.set_parent(conn, tenant_id, role, parent)
        return await policy_store.bump_version(conn, tenant_id)


async def test_templates_are_stored_once_and_kept_in_step(store: PolicyStore) -> None:
    # The fixture synced them; a second sync (another instance starting) changes nothing.
    assert await store.sync_templates() is False
    snapshot = await store.load(uuid.uuid4())
    stored = {r for r in snapshot.rules if r[0] == "p" and r[2] == TEMPLATE_DOMAIN}
    assert stored == set(template_rules())


async def test_every_template_grants_exactly_what_it_declares(store: PolicyStore) -> None:
    registry = EnforcerRegistry(store)
    policy = await registry.get(uuid.uuid4())
    for role, granted in TEMPLATES.items():
        for perm in ALL_PERMISSIONS:
            assert policy.allows(role, *perm) is (perm in granted), (role, perm)
    assert not policy.allows("no_such_role", "accounts", "read")
    # The table as documented, spot-checked where it matters most.
    assert policy.allows("admin", "roles", "update")
    assert not policy.allows("sales_rep", "roles", "update")
    assert not policy.allows("sales_manager", "roles", "create")
    assert not policy.allows("read_only", "contacts", "create")
    assert not policy.allows("read_only", "pii", "read")
    assert policy.allows("support_agent", "contacts", "update")
    assert not policy.allows("support_agent", "contacts", "delete")
    assert policy.allows("integration", "records", "read_all")
    assert not policy.allows("sales_manager", "records", "read_all")


async def test_custom_role_inherits_and_adds(
    store: PolicyStore, control: AsyncEngine, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    await change(control, tenant, "senior_rep", [("roles", "read")], parent="sales_rep")
    policy = await EnforcerRegistry(store).get(tenant)
    view = policy.snapshot.roles()["senior_rep"]
    assert view.inherits == "sales_rep"
    assert view.effective == TEMPLATES["sales_rep"] | {("roles", "read")}
    for perm in ALL_PERMISSIONS:
        assert policy.allows("senior_rep", *perm) is (perm in view.effective), perm
    # The base role itself gained nothing.
    assert not policy.allows("sales_rep", "roles", "read")


async def test_override_applies_to_its_tenant_only(
    store: PolicyStore, control: AsyncEngine, new_tenant: NewTenant
) -> None:
    a, b = await new_tenant(), await new_tenant()
    await change(control, a, "read_only", [("accounts", "read")], kind="override")
    registry = EnforcerRegistry(store)
    in_a, in_b = await registry.get(a), await registry.get(b)
    assert in_a.allows("read_only", "accounts", "read")
    assert not in_a.allows("read_only", "contacts", "read")
    assert in_b.allows("read_only", "contacts", "read")
    assert a not in {r[2] for r in in_b.snapshot.effective_rules() if r[0] == "p"}


async def test_custom_role_of_one_tenant_is_unknown_in_another(
    store: PolicyStore, control: AsyncEngine, new_tenant: NewTenant
) -> None:
    a, b = await new_tenant(), await new_tenant()
    await change(control, a, "auditor", [("users", "read")], parent="read_only")
    registry = EnforcerRegistry(store)
    assert (await registry.get(a)).allows("auditor", "users", "read")
    in_b = await registry.get(b)
    assert "auditor" not in in_b.roles
    assert not any(in_b.allows("auditor", *perm) for perm in ALL_PERMISSIONS)


async def test_lru_evicts_the_least_recently_used_tenant(
    store: PolicyStore, new_tenant: NewTenant
) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    registry = EnforcerRegistry(store, max_tenants=2)
    await registry.get(a)
    await registry.get(b)
    assert registry.cached(a) is not None  # a is now the most recently used
    await registry.get(c)
    assert len(registry) == 2
    assert registry.cached(b) is None
    assert registry.cached(a) is not None
    assert registry.cached(c) is not None
    assert registry.stats.evictions == 1


async def test_reload_swaps_the_enforcer_and_drops_the_memo(
    store: PolicyStore, control: AsyncEngine, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    version = await change(control, tenant, "auditor", [("users", "read")])
    registry = EnforcerRegistry(store)
    before = await registry.get(tenant)
    assert before.version == version
    assert before.allows("auditor", "users", "read")  # memoised now
    assert await registry.get(tenant) is before  # warm: same instance, no load
    assert registry.stats.loads == 1

    newer = await change(control, tenant, "auditor", [("accounts", "read")])
    registry.notice(tenant, newer)
    after = await registry.get(tenant)
    assert after is not before
    assert after.version == newer
    assert not after.allows("auditor", "users", "read")
    assert after.allows("auditor", "accounts", "read")
    # A request that started on the old policy keeps a consistent view until it ends.
    assert before.allows("auditor", "users", "read")
    # An announcement of a version already loaded (or older) changes nothing.
    registry.notice(tenant, newer)
    registry.notice(tenant, version)
    assert await registry.get(tenant) is after
    assert registry.stats.loads == 2


async def test_ttl_revalidates_by_version_and_reloads_only_on_change(
    store: PolicyStore, control: AsyncEngine, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    clock = Clock()
    registry = EnforcerRegistry(store, ttl=10.0, clock=clock)
    first = await registry.get(tenant)
    clock.now += 11
    assert registry.cached(tenant) is None  # expired: not trusted without a check
    assert await registry.get(tenant) is first  # same version: kept, memo and all
    assert registry.stats.revalidations == 1
    assert registry.stats.loads == 1

    # A change whose announcement never arrived (Redis down) is picked up after the TTL.
    await change(control, tenant, "auditor", [("users", "read")])
    assert (await registry.get(tenant)) is first
    clock.now += 11
    reloaded = await registry.get(tenant)
    assert reloaded is not first
    assert reloaded.allows("auditor", "users", "read")
    assert registry.stats.loads == 2


async def test_a_cold_burst_loads_once(store: PolicyStore) -> None:
    registry = EnforcerRegistry(store)
    tenant = uuid.uuid4()
    got = await asyncio.gather(*(registry.get(tenant) for _ in range(50)))
    assert all(p is got[0] for p in got)
    assert registry.stats.loads == 1


async def test_a_load_older_than_an_announcement_is_not_kept(
    store: PolicyStore, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    registry = EnforcerRegistry(store)
    # Another instance announced version 5 while this one still reads version 0 (the
    # announcement overtook the commit's visibility): serve it, but do not keep it.
    registry.notice(tenant, 5)
    policy = await registry.get(tenant)
    assert policy.version == 0
    assert registry.cached(tenant) is None


async def test_clear_during_a_load_keeps_the_load_out(store: PolicyStore) -> None:
    registry = EnforcerRegistry(store)
    tenant = uuid.uuid4()
    pending = asyncio.create_task(registry.get(tenant))
    await asyncio.sleep(0)  # the load has started and awaits the database
    registry.clear()  # e.g. the watcher reconnected and may have missed announcements
    policy = await pending
    assert policy.allows("admin", "roles", "read")
    assert registry.cached(tenant) is None


# -- the enforcer and the pure reading of the rules agree ------------------------------

ROLE_NAMES = ["r1", "r2", "r3", "r4"]
TENANT = uuid.UUID(int=1)
OTHER = uuid.UUID(int=2)


@st.composite
def policies(draw: st.DrawFn) -> PolicySnapshot:
    dom = str(TENANT)
    rules: list[Rule] = list(template_rules())
    customs = draw(st.lists(st.sampled_from(ROLE_NAMES), unique=True, max_size=4))
    bases = list(TEMPLATES)
    for i, role in enumerate(customs):
        for obj, act in draw(st.lists(st.sampled_from(ALL_PERMISSIONS), max_size=4)):
            rules.append(("p", role, dom, obj, act))
        # Parents only among templates and earlier custom roles: acyclic by construction.
        parent = draw(st.none() | st.sampled_from(bases + customs[:i]))
        if parent is not None:
            rules.append(("g", role, parent, dom))
    overrides = draw(st.lists(st.sampled_from(bases[1:]), unique=True, max_size=2))
    for role in overrides:
        for obj, act in draw(st.lists(st.sampled_from(ALL_PERMISSIONS), max_size=3)):
            rules.append(("p", role, dom, obj, act))
    # Another tenant's rules are in no snapshot of this one, but must not count if present.
    rules.append(("p", "r1", str(OTHER), "roles", "delete"))
    rules.append(("g", "r2", "admin", str(OTHER)))
    return PolicySnapshot(TENANT, 1, tuple(rules), frozenset(overrides), frozenset(customs))


@settings(max_examples=60, deadline=None)
@given(policies())
def test_enforcer_decisions_equal_the_effective_permissions(snapshot: PolicySnapshot) -> None:
    policy = TenantPolicy(snapshot, deadline=float("inf"))
    for name, view in snapshot.roles().items():
        for perm in ALL_PERMISSIONS:
            assert policy.allows(name, *perm) is (perm in view.effective), (name, perm)
            assert policy.enforce_uncached(name, *perm) is (perm in view.effective)


async def test_an_unreadable_control_plane_keeps_the_last_policy(
    databases: TestDatabases, new_tenant: NewTenant
) -> None:
    """The failure is real: a database role that loses its privileges mid-run."""
    admin = create_async_engine(databases.settings().control_migrate_dsn)
    role = f"authz_probe_{uuid.uuid4().hex[:10]}"
    tables = "casbin_rule, tenant_role, policy_version"
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        await conn.execute(text(f'GRANT SELECT ON {tables} TO "{role}"'))
    probe = create_async_engine(
        databases.settings().control_dsn.replace("meridian_app@", f"{role}@")
    )
    try:
        tenant, cold = await new_tenant(), uuid.uuid4()
        clock = Clock()
        registry = EnforcerRegistry(PolicyStore(probe), ttl=10.0, clock=clock)
        first = await registry.get(tenant)
        async with admin.begin() as conn:
            await conn.execute(text(f'REVOKE SELECT ON {tables} FROM "{role}"'))
        clock.now += 11
        assert await registry.get(tenant) is first  # revalidation failed: kept
        assert registry.cached(tenant) is first  # for a short grace, not hammering
        with pytest.raises(PolicyUnavailable):
            await registry.get(cold)  # nothing to fall back on
    finally:
        await probe.dispose()
        async with admin.begin() as conn:
            await conn.execute(text(f'REVOKE ALL ON {tables} FROM "{role}"'))
            await conn.execute(text(f'DROP ROLE "{role}"'))
        await admin.dispose()


async def test_while_announcements_arrive_an_enforcer_is_held_past_the_ttl(
    store: PolicyStore, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    clock = Clock()
    registry = EnforcerRegistry(store, ttl=10.0, hold=300.0, clock=clock)
    registry.live = True  # as the watcher sets it while its subscription is confirmed
    first = await registry.get(tenant)
    clock.now += 100
    assert registry.cached(tenant) is first  # no version read: announcements keep it current
    assert registry.stats.revalidations == 0
    # The subscription is lost: the short TTL applies again at once.
    registry.live = False
    assert registry.cached(tenant) is None
    assert await registry.get(tenant) is first
    assert registry.stats.revalidations == 1
    clock.now += 301
    registry.live = True
    assert registry.cached(tenant) is None  # the hold is a bound too
