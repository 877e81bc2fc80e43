"""Role management: templates (shared, overridable per tenant) and custom roles.

Every change runs in one control-plane transaction that first locks the tenant's policy
version (opened by the kit's ``meridian.crud.control.change_policy``, never here),
validates against the rules as they are under that lock, writes, and bumps the
version; after the commit the change is applied in this process at once and announced
to the others. The version is the ETag of every role: a role's effective permissions
depend on the roles it inherits, so any change of the tenant's policy changes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from uuid import UUID

import asyncpg
from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from authz import store
from authz.enforcer import TenantPolicy
from authz.policy import (
    LOCKED_TEMPLATES,
    MAX_INHERITANCE_DEPTH,
    TEMPLATES,
    Permission,
    PolicySnapshot,
    RoleView,
    Rule,
)
from meridian.errors import (
    NOT_FOUND,
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    NotFound,
    PreconditionFailed,
    ValidationFailed,
    invalid_field,
)
from meridian.events import outbox
from meridian.oauth.models import OAuthClient
from meridian.roles.schemas import (
    PermissionBody,
    PermissionIn,
    RoleBody,
    RoleCreate,
    RoleUpdate,
)
from meridian.users.repository import UserRepository


def _perms(items: Iterable[PermissionIn]) -> frozenset[Permission]:
    return frozenset((p.object, p.action) for p in items)


def _listed(perms: Iterable[Permission]) -> list[PermissionBody]:
    return [{"object": o, "action": a} for o, a in sorted(perms)]


def _present(view: RoleView, description: str | None, version: int) -> RoleBody:
    return {
        "name": view.name,
        "kind": view.kind,
        "overridden": view.overridden,
        "inherits": view.inherits,
        "description": description,
        "permissions": _listed(view.permissions),
        "effective_permissions": _listed(view.effective),
        "policy_version": version,
    }


def _not_found(name: str) -> NotFound:
    return NotFound(f"No role named '{name}'.")


async def _existing(
    conn: AsyncConnection, tenant_id: UUID, name: str
) -> tuple[PolicySnapshot, RoleView]:
    """The tenant's policy and the role ``name`` in it; 404 when there is no such role."""
    snapshot = await store.read_snapshot(conn, tenant_id)
    view = snapshot.roles().get(name)
    if view is None:
        raise _not_found(name)
    return snapshot, view


def _no_parent(name: str) -> ValidationFailed:
    return invalid_field("inherits", f"no role named '{name}' to inherit from", NOT_FOUND)


def _check_version(expected: int | None, current: int) -> None:
    if expected is not None and expected != current:
        raise PreconditionFailed("The tenant's roles have changed since the ETag was issued.")


def _check_grantable(grantor: Grantor, perms: Iterable[Permission]) -> None:
    """Nobody hands out rights they do not hold themselves (no escalation through a
    role they are allowed to edit)."""
    missing = sorted(p for p in perms if not grantor.holds(p))
    if missing:
        listed = ", ".join(f"{o}:{a}" for o, a in missing)
        raise Forbidden(
            f"The role '{grantor.role}' cannot grant permissions it does not hold: {listed}."
        )


def _check_graph(snapshot: PolicySnapshot, rules: list[Rule]) -> None:
    """Inheritance must stay acyclic and shallow (Casbin denies silently past 10)."""
    trial = PolicySnapshot(
        snapshot.tenant_id,
        snapshot.version,
        tuple(rules),
        snapshot.overrides,
        snapshot.custom_roles,
    )
    for role in trial.custom_roles:
        chain, cursor = [role], trial.parent_of(role)
        while cursor is not None:
            if cursor in chain:
                raise Conflict(f"Role '{role}' would inherit from itself.")
            chain.append(cursor)
            cursor = trial.parent_of(cursor)
        if len(chain) - 1 > MAX_INHERITANCE_DEPTH:
            raise Conflict(
                f"Role '{role}' would inherit through more than {MAX_INHERITANCE_DEPTH} roles."
            )


def _with_parent(snapshot: PolicySnapshot, role: str, parent: str | None) -> list[Rule]:
    dom = snapshot.domain
    rules = [r for r in snapshot.rules if not (r[0] == "g" and r[1] == role and r[3] == dom)]
    if parent is not None:
        rules.append(("g", role, parent, dom))
    return rules


@dataclass(frozen=True, slots=True)
class Grantor:
    """Who changes a role: the caller's role and the tenant's policy as it was when the
    request was authorized (the rights the caller may hand out)."""

    role: str
    policy: TenantPolicy

    def holds(self, perm: Permission) -> bool:
        return self.policy.allows(self.role, *perm)


# What a role event compares of a role (its policy_version changes with every role's).
_EVENT_FIELDS = (
    "kind",
    "overridden",
    "inherits",
    "description",
    "permissions",
    "effective_permissions",
)


def role_event(before: RoleBody | None, after: RoleBody | None) -> tuple[str, dict[str, object]]:
    """The type and data of the event of a role change: ``role.created`` (no
    ``before``), ``role.deleted`` (no ``after``) or ``role.updated``; the role as it is
    after (before a deletion), the fields that changed, and its own permissions before
    and after."""
    shown = after or before
    if shown is None:
        raise ValueError("a role event needs the role before or after the change")
    action = "created" if before is None else "deleted" if after is None else "updated"
    data: dict[str, object] = {
        "record": dict(shown),
        "permissions": {
            "before": before["permissions"] if before is not None else None,
            "after": after["permissions"] if after is not None else None,
        },
    }
    if before is not None and after is not None:
        data["changes"] = {
            f: {"old": before[f], "new": after[f]}  # type: ignore[literal-required]
            for f in _EVENT_FIELDS
            if before[f] != after[f]  # type: ignore[literal-required]
        }
    return f"role.{action}", data


class RoleService:
    """Reads take a control-plane connection, changes take the connection of the
    transaction ``meridian.crud.control.change_policy`` opens under the tenant's policy
    lock, with ``version`` the policy version under that lock; no method opens one."""

    async def _view(self, conn: AsyncConnection, tenant_id: UUID, name: str) -> RoleBody:
        snapshot, view = await _existing(conn, tenant_id, name)
        descriptions = await store.descriptions(conn, tenant_id)
        return _present(view, descriptions.get(name), snapshot.version)

    async def list_roles(
        self, conn: AsyncConnection, tenant_id: UUID
    ) -> tuple[list[RoleBody], int]:
        snapshot = await store.read_snapshot(conn, tenant_id)
        descriptions = await store.descriptions(conn, tenant_id)
        rows = [
            _present(view, descriptions.get(name), snapshot.version)
            for name, view in sorted(snapshot.roles().items())
        ]
        return rows, snapshot.version

    async def get_role(self, conn: AsyncConnection, tenant_id: UUID, name: str) -> RoleBody:
        return await self._view(conn, tenant_id, name)

    async def find_role(self, conn: AsyncConnection, tenant_id: UUID, name: str) -> RoleBody | None:
        """The role as it is, or None (a change reads it first, for its event)."""
        try:
            return await self._view(conn, tenant_id, name)
        except NotFound:
            return None

    async def record_change(
        self,
        session: AsyncSession,
        tenant_id: UUID,
        before: RoleBody | None,
        after: RoleBody | None,
    ) -> None:
        """Queue the event of a committed role change in a transaction of the tenant's
        shard, where the tenant's event log is (roles live in the control plane)."""
        type_, data = role_event(before, after)
        outbox.record(session, tenant_id, type_, "role", None, extra=data)

    async def create_role(
        self,
        conn: AsyncConnection,
        tenant_id: UUID,
        grantor: Grantor,
        body: RoleCreate,
        key: str | None,
    ) -> tuple[RoleBody, bool]:
        """Returns (role, created_now); a retry with the same (validated) Idempotency-Key
        returns the role it created."""
        if key is not None:
            earlier = await store.find_role_by_key(conn, tenant_id, key)
            if earlier is not None:
                if earlier != body.name:
                    raise IdempotencyKeyReused(
                        "This Idempotency-Key created another role; use a new key."
                    )
                return await self._view(conn, tenant_id, earlier), False
        snapshot = await store.read_snapshot(conn, tenant_id)
        if body.name in snapshot.role_names:
            kind = "role template" if body.name in TEMPLATES else "role"
            raise Conflict(f"A {kind} named '{body.name}' already exists.")
        perms = _perms(body.permissions)
        inherited: frozenset[Permission] = frozenset()
        if body.inherits is not None:
            parent = snapshot.roles().get(body.inherits)
            if parent is None:
                raise _no_parent(body.inherits)
            inherited = parent.effective
            if snapshot.depth_of(body.inherits) + 1 > MAX_INHERITANCE_DEPTH:
                raise Conflict(f"A role may inherit through at most {MAX_INHERITANCE_DEPTH} roles.")
        _check_grantable(grantor, perms | inherited)
        await store.put_role(
            conn,
            tenant_id,
            body.name,
            "custom",
            description=body.description,
            creation_key=key,
        )
        await store.set_permissions(conn, tenant_id, body.name, perms)
        await store.set_parent(conn, tenant_id, body.name, body.inherits)
        await store.bump_version(conn, tenant_id)
        return await self._view(conn, tenant_id, body.name), True

    async def update_role(
        self,
        conn: AsyncConnection,
        tenant_id: UUID,
        grantor: Grantor,
        name: str,
        body: RoleUpdate,
        *,
        version: int,
        expected: int | None,
    ) -> RoleBody:
        changes = body.model_fields_set
        _check_version(expected, version)
        snapshot, view = await _existing(conn, tenant_id, name)
        if view.kind != "custom":
            raise Conflict(
                f"'{name}' is a role template: change its permissions for this tenant "
                f"with PUT /v1/roles/{name}/permissions."
            )
        if "inherits" in changes:
            if body.inherits is not None and body.inherits not in snapshot.role_names:
                raise _no_parent(body.inherits)
            rules = _with_parent(snapshot, name, body.inherits)
            _check_graph(snapshot, rules)
            parent = snapshot.roles().get(body.inherits) if body.inherits else None
            _check_grantable(grantor, parent.effective if parent else ())
            await store.set_parent(conn, tenant_id, name, body.inherits)
        if "permissions" in changes:
            perms = _perms(body.permissions or [])
            _check_grantable(grantor, perms - view.permissions)
            await store.set_permissions(conn, tenant_id, name, perms)
        if "description" in changes:
            await store.describe_role(conn, tenant_id, name, body.description)
        if changes:
            await store.bump_version(conn, tenant_id)
        return await self._view(conn, tenant_id, name)

    async def set_role_permissions(
        self,
        conn: AsyncConnection,
        tenant_id: UUID,
        grantor: Grantor,
        name: str,
        permissions: list[PermissionIn],
        *,
        version: int,
        expected: int | None,
    ) -> RoleBody:
        """A custom role's permissions, or a template's for this tenant (an override)."""
        perms = _perms(permissions)
        _check_version(expected, version)
        _, view = await _existing(conn, tenant_id, name)
        if name in LOCKED_TEMPLATES:
            raise Conflict(f"The '{name}' role cannot be changed: it keeps the tenant manageable.")
        _check_grantable(grantor, perms - view.permissions)
        if view.kind == "template":
            await store.put_role(conn, tenant_id, name, "override")
        await store.set_permissions(conn, tenant_id, name, perms)
        await store.bump_version(conn, tenant_id)
        return await self._view(conn, tenant_id, name)

    async def reset_role_permissions(
        self,
        conn: AsyncConnection,
        tenant_id: UUID,
        grantor: Grantor,
        name: str,
        *,
        version: int,
        expected: int | None,
    ) -> RoleBody:
        """Drop a tenant's override of a template: the shared permissions apply again."""
        _check_version(expected, version)
        _, view = await _existing(conn, tenant_id, name)
        if view.kind != "template":
            raise Conflict(f"'{name}' is a custom role: it has no template to return to.")
        if view.overridden:
            template = TEMPLATES.get(name, frozenset())
            _check_grantable(grantor, template - view.permissions)
            await store.drop_role(conn, tenant_id, name)
            await store.bump_version(conn, tenant_id)
        return await self._view(conn, tenant_id, name)

    async def delete_role(
        self,
        conn: AsyncConnection,
        tenant_id: UUID,
        name: str,
        *,
        version: int,
        expected: int | None,
        users_hold: Callable[[], Awaitable[bool]],
    ) -> None:
        """``users_hold`` tells whether a user of the tenant still has the role (see
        :meth:`users_hold`); it is asked last, only when nothing else stops the delete."""
        _check_version(expected, version)
        snapshot, view = await _existing(conn, tenant_id, name)
        if view.kind != "custom":
            raise Conflict(f"'{name}' is a role template and cannot be deleted.")
        heirs = sorted(r for r in snapshot.custom_roles if snapshot.parent_of(r) == name)
        if heirs:
            raise Conflict(f"Roles inherit from '{name}': {', '.join(heirs)}.")
        client_holds = await conn.scalar(
            select(
                exists().where(
                    OAuthClient.tenant_id == tenant_id,
                    OAuthClient.role == name,
                    OAuthClient.revoked_at.is_(None),
                )
            )
        )
        if client_holds or await users_hold():
            raise Conflict(f"Role '{name}' is still given to users or clients.")
        await store.drop_role(conn, tenant_id, name)
        await store.bump_version(conn, tenant_id)

    async def users_hold(self, shard: asyncpg.Connection, tenant_id: UUID, name: str) -> bool:
        """Whether a user has the role, read on the tenant's shard (where users live).
        The check is not atomic with the delete (two databases); a user given the role
        meanwhile is simply denied everything."""
        return await UserRepository.fetch_role_held(shard, tenant_id, name)


role = RoleService()
