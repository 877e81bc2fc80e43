"""User storage and the reporting-line closure (``authz.models.UserClosure``).

The closure holds every (manager, report) pair at any depth plus each user with itself
at depth 0. It changes in the transaction that changes a manager, under the tenant's
hierarchy lock (``lock_hierarchy``), so concurrent moves cannot interleave.
"""

from __future__ import annotations

from typing import NamedTuple
from uuid import UUID

import asyncpg
from sqlalchemy import (
    Select,
    Text,
    Uuid,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.orm import aliased

from authz.models import UserClosure
from meridian.crud.compiled import prepared
from meridian.crud.filters import FilterField
from meridian.crud.repository import TenantRepository
from meridian.crud.schemas import normalise_email
from meridian.users.models import AppUser, UserRow

SORTABLE = {
    "name": AppUser.name,
    "created_at": AppUser.created_at,
    "updated_at": AppUser.updated_at,
}
# What ?filter= may name (meridian.crud.filters).
FILTERABLE = {
    "id": FilterField(AppUser.id, "uuid"),
    # Stored trimmed and lower-cased.
    "email": FilterField(AppUser.email, "text", normalize=normalise_email),
    "name": FilterField(AppUser.name, "text"),
    "role": FilterField(AppUser.role, "text"),
    "manager_id": FilterField(AppUser.manager_id, "uuid"),
    "active": FilterField(AppUser.active, "bool"),
    "created_at": FilterField(AppUser.created_at, "datetime"),
    "updated_at": FilterField(AppUser.updated_at, "datetime"),
}

# Class of the transaction-level advisory lock that serialises a tenant's reporting-line
# changes (the second key is a hash of the tenant id). Arbitrary, fixed, and used for
# nothing else.
HIERARCHY_LOCK = 0x4D524801


class ActorRow(NamedTuple):
    role: str
    active: bool


class Current(NamedTuple):
    version: int
    manager_id: UUID | None
    active: bool


class LoginRow(NamedTuple):
    id: UUID
    role: str
    active: bool
    password_hash: str | None


_TENANT = bindparam("tenant_id", type_=Uuid())
_USER = bindparam("user_id", type_=Uuid())


def _login_statement(by: str) -> Select[UUID, str, bool, str | None]:
    key = (
        AppUser.email == bindparam("email")
        if by == "email"
        else AppUser.id == bindparam("id", type_=Uuid())
    )
    return select(AppUser.id, AppUser.role, AppUser.active, AppUser.password_hash).where(
        AppUser.tenant_id == _TENANT, key
    )


class Credentials(NamedTuple):
    id: UUID
    role: str
    password_hash: str | None


class UserRepository(TenantRepository[UserRow]):
    model = AppUser
    event_kind = "user"
    # The password hash never leaves the repository except for verification.
    hidden = frozenset({"tenant_id", "password_hash"})

    # -- request path (raw connection) ---------------------------------------------------
    @staticmethod
    async def fetch_actor(
        conn: asyncpg.Connection, tenant_id: UUID, user_id: UUID
    ) -> ActorRow | None:
        compiled = prepared(
            (AppUser, "actor"),
            lambda: select(AppUser.role, AppUser.active).where(
                AppUser.tenant_id == _TENANT, AppUser.id == _USER
            ),
        )
        row = await conn.fetchrow(
            compiled.sql, *compiled.args({"tenant_id": tenant_id, "user_id": user_id})
        )
        return ActorRow(row["role"], row["active"]) if row is not None else None

    @staticmethod
    def actor_sql() -> str:
        """The actor's role and state for ``ShardRouter.read_one`` (one round trip):
        ``$1`` is the user's id, the tenant the enter function's lateral ``e.tid``."""
        compiled = prepared(
            (AppUser, "actor-one-statement"),
            lambda: select(AppUser.role, AppUser.active).where(
                AppUser.tenant_id == literal_column("e.tid"), AppUser.id == _USER
            ),
        )
        if compiled.names != (_USER.key,):
            raise ValueError(f"the actor read takes {compiled.names}")
        return compiled.sql

    @staticmethod
    async def fetch_login(
        conn: asyncpg.Connection,
        tenant_id: UUID,
        *,
        email: str | None = None,
        user_id: UUID | None = None,
    ) -> LoginRow | None:
        """What the token endpoint checks of the user with this (normalised) e-mail, or
        this id: the only read of a password hash outside a change of it."""
        by = "email" if email is not None else "id"
        compiled = prepared((AppUser, "login", by), lambda: _login_statement(by))
        value = email if email is not None else user_id
        row = await conn.fetchrow(compiled.sql, *compiled.args({"tenant_id": tenant_id, by: value}))
        if row is None:
            return None
        return LoginRow(row["id"], row["role"], row["active"], row["password_hash"])

    @staticmethod
    async def fetch_role_held(conn: asyncpg.Connection, tenant_id: UUID, role: str) -> bool:
        """Whether any user of the tenant has ``role`` (a role in use is not deleted)."""
        compiled = prepared(
            (AppUser, "role-held"),
            lambda: select(
                exists().where(AppUser.tenant_id == _TENANT, AppUser.role == bindparam("role"))
            ),
        )
        return bool(
            await conn.fetchval(
                compiled.sql, *compiled.args({"tenant_id": tenant_id, "role": role})
            )
        )

    # -- checks ----------------------------------------------------------------------------
    async def email_taken(self, email: str) -> bool:
        stmt = select(AppUser.id).where(self.scoped(), AppUser.email == email)
        return await self.session.scalar(stmt) is not None

    async def is_active(self, user_id: UUID) -> bool:
        """Whether ``user_id`` is an active user of this tenant (a valid owner,
        manager or grantee). Another tenant's user id is simply not found."""
        stmt = select(AppUser.id).where(
            self.scoped(), AppUser.id == user_id, AppUser.active.is_(True)
        )
        return await self.session.scalar(stmt) is not None

    async def current(self, user_id: UUID) -> Current | None:
        """Version, manager and state, locking the row for the update that follows."""
        stmt = (
            select(AppUser.version, AppUser.manager_id, AppUser.active)
            .where(self.scoped(), AppUser.id == user_id)
            .with_for_update(key_share=True)
        )
        row = (await self.session.execute(stmt)).one_or_none()
        return Current(row[0], row[1], row[2]) if row is not None else None

    async def has_active_reports(self, user_id: UUID) -> bool:
        stmt = select(AppUser.id).where(
            self.scoped(), AppUser.manager_id == user_id, AppUser.active.is_(True)
        )
        return await self.session.scalar(stmt.limit(1)) is not None

    async def credentials(self, email: str) -> Credentials | None:
        """The active user with this e-mail and their password hash (for login)."""
        stmt = select(AppUser.id, AppUser.role, AppUser.password_hash).where(
            self.scoped(), AppUser.email == email, AppUser.active.is_(True)
        )
        row = (await self.session.execute(stmt)).one_or_none()
        return Credentials(row[0], row[1], row[2]) if row is not None else None

    async def set_password_hash(self, user_id: UUID, encoded: str) -> None:
        """Replace a hash with a stronger one of the same password (no version bump:
        the representation does not change)."""
        stmt = (
            update(AppUser)
            .where(self.scoped(), AppUser.id == user_id)
            .values(password_hash=encoded)
            .execution_options(synchronize_session=False)
        )
        await self.session.execute(stmt)

    # -- the reporting line ------------------------------------------------------------
    async def lock_hierarchy(self) -> None:
        """Serialise the tenant's reporting-line changes until this transaction ends.

        A manager change reads the closure (the cycle check, the ancestors to copy) and
        then rewrites it; two concurrent changes computed from the same snapshot could
        build a cycle or leave stale rows. Row locks would need the affected set before
        locking it, and that set is what a concurrent change alters; one transaction
        lock per tenant serialises exactly the hierarchy writers (rare) and nothing
        else. Taken before any user row lock, always, so the order is consistent.
        """
        tenant_key = func.hashtext(cast(literal(str(self.tenant_id)), Text))
        await self.session.execute(select(func.pg_advisory_xact_lock(HIERARCHY_LOCK, tenant_key)))

    async def in_subtree(self, root: UUID, candidate: UUID) -> bool:
        """Whether ``candidate`` is ``root`` or below it."""
        stmt = select(UserClosure.depth).where(
            UserClosure.tenant_id == self.tenant_id,
            UserClosure.ancestor_id == root,
            UserClosure.descendant_id == candidate,
        )
        return await self.session.scalar(stmt) is not None

    async def add_to_closure(self, user_id: UUID, manager_id: UUID | None) -> None:
        """A new user: itself at depth 0, and below each of the manager's superiors."""
        tid = self.tenant_id
        await self.session.execute(
            insert(UserClosure).values(
                tenant_id=tid, ancestor_id=user_id, descendant_id=user_id, depth=0
            )
        )
        if manager_id is None:
            return
        above = select(
            UserClosure.tenant_id,
            UserClosure.ancestor_id,
            literal(user_id).label("descendant_id"),
            (UserClosure.depth + 1).label("depth"),
        ).where(UserClosure.tenant_id == tid, UserClosure.descendant_id == manager_id)
        await self.session.execute(
            insert(UserClosure).from_select(
                ["tenant_id", "ancestor_id", "descendant_id", "depth"], above
            )
        )

    async def move_subtree(self, user_id: UUID, manager_id: UUID | None) -> None:
        """Put ``user_id`` (and everyone below) under ``manager_id``: the standard
        closure move. The caller holds the hierarchy lock and has refused cycles."""
        tid = self.tenant_id
        subtree = select(UserClosure.descendant_id).where(
            UserClosure.tenant_id == tid, UserClosure.ancestor_id == user_id
        )
        old_superiors = select(UserClosure.ancestor_id).where(
            UserClosure.tenant_id == tid,
            UserClosure.descendant_id == user_id,
            UserClosure.ancestor_id != user_id,
        )
        # Every path from above the user into the subtree goes.
        await self.session.execute(
            delete(UserClosure)
            .where(
                UserClosure.tenant_id == tid,
                UserClosure.descendant_id.in_(subtree),
                UserClosure.ancestor_id.in_(old_superiors),
            )
            .execution_options(synchronize_session=False)
        )
        if manager_id is None:
            return
        # New superiors (the manager and above) x the subtree, depths added up.
        sup = aliased(UserClosure)
        sub = aliased(UserClosure)
        paths = (
            select(
                sup.tenant_id,
                sup.ancestor_id,
                sub.descendant_id,
                (sup.depth + sub.depth + 1).label("depth"),
            )
            .select_from(sup)
            .join(sub, sub.tenant_id == sup.tenant_id)
            .where(
                sup.tenant_id == tid,
                sup.descendant_id == manager_id,
                sub.ancestor_id == user_id,
            )
        )
        await self.session.execute(
            insert(UserClosure).from_select(
                ["tenant_id", "ancestor_id", "descendant_id", "depth"], paths
            )
        )
