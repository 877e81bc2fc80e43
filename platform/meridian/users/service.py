"""User rules: unique e-mail per tenant, a reporting line that stays a tree of active
managers, closure rows kept in the same transaction, and password hashing that never
runs on the event loop."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from authz.enforcer import TenantPolicy
from meridian.crud.repository import VersionMismatch
from meridian.crud.schemas import normalise_email
from meridian.errors import NOT_FOUND, Conflict, Forbidden, invalid_field
from meridian.ids import new_id
from meridian.users import passwords
from meridian.users.models import UserRow
from meridian.users.repository import Credentials, UserRepository
from meridian.users.schemas import UserCreate, UserUpdate
from tenancy.context import TenantContext

PASSWORD = "password"  # noqa: S105 (the field's name)


class UserService:
    def check_assignable(self, policy: TenantPolicy, grantor: str, role: str) -> None:
        """``role`` must exist in the tenant (422 naming it) and grant nothing the
        caller's own role (``grantor``) lacks under the tenant's ``policy`` as the request
        was authorized with it (403: nobody escalates by handing out a role)."""
        view = policy.snapshot.roles().get(role)
        if view is None:
            raise invalid_field("role", f"no role named '{role}' in this tenant", NOT_FOUND)
        if not all(policy.allows(grantor, obj, act) for obj, act in view.effective):
            raise Forbidden(f"The role '{role}' grants permissions your role does not have.")

    async def hash_password(self, body: UserCreate | UserUpdate) -> str | None:
        """The hash of the body's password, computed in a worker thread before any
        transaction opens (so no connection or lock waits ~40 ms for it)."""
        if body.password is None:
            return None
        return await passwords.hash_in_thread(body.password.get_secret_value())

    async def require_active(
        self, session: AsyncSession, tenant: TenantContext, user_id: UUID | None, field: str
    ) -> None:
        """``user_id`` (when given) must be an active user of the tenant: a valid owner,
        manager or share grantee. Another tenant's user id is not one."""
        if user_id is None:
            return
        if not await UserRepository(session, tenant).is_active(user_id):
            raise invalid_field(field, f"no active user with id {user_id}", NOT_FOUND)

    async def create(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        body: UserCreate,
        password_hash: str | None,
    ) -> UserRow:
        repo = UserRepository(session, tenant)
        if await repo.email_taken(body.email):
            # A racing duplicate is stopped by the unique index (also 409).
            raise Conflict(f"A user with e-mail {body.email} exists.")
        if body.manager_id is not None:
            # The manager's superiors are copied below: they must not move meanwhile.
            await repo.lock_hierarchy()
            await self.require_active(session, tenant, body.manager_id, "manager_id")
        user_id = new_id()
        values = body.model_dump(exclude={PASSWORD})
        row = await repo.insert({"id": user_id, **values, "password_hash": password_hash})
        await repo.add_to_closure(user_id, body.manager_id)
        return row

    async def update(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        user_id: UUID,
        body: UserUpdate,
        expected_version: int | None,
        password_hash: str | None,
    ) -> UserRow | None:
        values = body.changes()
        if PASSWORD in values:
            del values[PASSWORD]
            values["password_hash"] = password_hash  # None removes the password
        repo = UserRepository(session, tenant)
        if "manager_id" in values or "active" in values:
            # Before the user's row lock, always: one lock order for every writer.
            await repo.lock_hierarchy()
        current = await repo.current(user_id)
        if current is None:
            return None
        if expected_version is not None and current.version != expected_version:
            raise VersionMismatch
        manager_id = values.get("manager_id", current.manager_id)
        active = values.get("active", current.active)
        if manager_id != current.manager_id:
            if manager_id is not None:
                await self.require_active(session, tenant, manager_id, "manager_id")
                if await repo.in_subtree(user_id, manager_id):
                    raise Conflict(
                        "manager_id: a user cannot report to themselves or to anyone below them"
                    )
            await repo.move_subtree(user_id, manager_id)
        elif active and not current.active and manager_id is not None:
            # Reactivation under a manager who has left since.
            await self.require_active(session, tenant, manager_id, "manager_id")
        if current.active and not active and await repo.has_active_reports(user_id):
            raise Conflict("active: the user manages active users; give them a new manager first")
        return await repo.update(user_id, values, expected_version=expected_version)

    async def authenticate(
        self, session: AsyncSession, tenant: TenantContext, email: str, password: str
    ) -> Credentials | None:
        """The active user with this e-mail and password, or None (for the login grant).

        Unknown users cost the same hash as wrong passwords. A hash made with older
        parameters (or another scheme) is replaced in this transaction.
        """
        repo = UserRepository(session, tenant)
        found = await repo.credentials(normalise_email(email))
        stored = found.password_hash if found is not None else None
        if not await passwords.verify_in_thread(password, stored) or found is None:
            return None
        if stored is not None and passwords.needs_rehash(stored):
            await repo.set_password_hash(found.id, await passwords.hash_in_thread(password))
        return found


user = UserService()
