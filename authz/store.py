"""Policy storage on the control plane: loading a tenant's snapshot, seeding the role
templates, and the writes behind the roles API (always inside the caller's transaction,
which holds the tenant's policy lock)."""

from __future__ import annotations

import typing
from collections.abc import Iterable
from uuid import UUID

from sqlalchemy import (
    String,
    and_,
    cast,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from authz.models import CasbinRule, PolicyVersion, TenantRole
from authz.policy import TEMPLATE_DOMAIN, Permission, PolicySnapshot, Rule, template_rules

# Any constant both sides agree on: serialises concurrent template seeding at start-up.
_TEMPLATE_LOCK = 0x6D65726964_01


def _rule(ptype: str, v0: str | None, v1: str | None, v2: str | None, v3: str | None) -> Rule:
    if ptype == "p":
        return ("p", v0 or "", v1 or "", v2 or "", v3 or "")
    return ("g", v0 or "", v1 or "", v2 or "")


async def read_snapshot(conn: AsyncConnection, tenant_id: UUID) -> PolicySnapshot:
    """Version, rules and roles in one statement: one round trip, and one database
    snapshot, so the version always names exactly the rules read with it."""
    dom = str(tenant_id)
    none = null().cast(String)
    version = select(
        literal("v").label("k"), cast(PolicyVersion.version, String), none, none, none
    ).where(PolicyVersion.tenant_id == tenant_id)
    rules = select(
        CasbinRule.ptype, CasbinRule.v0, CasbinRule.v1, CasbinRule.v2, CasbinRule.v3
    ).where(
        or_(
            and_(CasbinRule.ptype == "p", CasbinRule.v1.in_([TEMPLATE_DOMAIN, dom])),
            and_(CasbinRule.ptype == "g", CasbinRule.v2 == dom),
        )
    )
    roles = select(literal("role"), TenantRole.name, TenantRole.kind, none, none).where(
        TenantRole.tenant_id == tenant_id
    )
    current = 0
    found: list[Rule] = []
    overrides: set[str] = set()
    customs: set[str] = set()
    # Union rows are untyped to SQLAlchemy; each is (kind, four text columns).
    rows = typing.cast(
        list[tuple[str | None, ...]],
        (await conn.execute(union_all(version, rules, roles))).all(),
    )
    for kind, a, b, c, d in rows:
        if kind == "v":
            current = int(a or 0)
        elif kind == "role":
            (overrides if b == "override" else customs).add(str(a))
        else:
            found.append(_rule(str(kind), a, b, c, d))
    return PolicySnapshot(
        tenant_id=tenant_id,
        version=current,
        rules=tuple(found),
        overrides=frozenset(overrides),
        custom_roles=frozenset(customs),
    )


async def read_version(conn: AsyncConnection, tenant_id: UUID) -> int:
    version = await conn.scalar(
        select(PolicyVersion.version).where(PolicyVersion.tenant_id == tenant_id)
    )
    return int(version or 0)


class PolicyStore:
    """The enforcer registry's loader: one short read per tenant load or revalidation."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def load(self, tenant_id: UUID) -> PolicySnapshot:
        async with self._engine.connect() as conn:
            return await read_snapshot(conn, tenant_id)

    async def version(self, tenant_id: UUID) -> int:
        async with self._engine.connect() as conn:
            return await read_version(conn, tenant_id)

    async def sync_templates(self) -> bool:
        """Make the stored templates (domain ``*``) equal the code's; True if changed.

        Idempotent and cheap when nothing changed, so every instance runs it at start-up;
        the advisory lock keeps two instances from interleaving their rewrites.
        """
        wanted = set(template_rules())
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _TEMPLATE_LOCK})
            rows = await conn.execute(
                select(
                    CasbinRule.ptype, CasbinRule.v0, CasbinRule.v1, CasbinRule.v2, CasbinRule.v3
                ).where(CasbinRule.ptype == "p", CasbinRule.v1 == TEMPLATE_DOMAIN)
            )
            stored = {_rule(*r) for r in rows}
            if stored == wanted:
                return False
            await conn.execute(
                delete(CasbinRule).where(CasbinRule.ptype == "p", CasbinRule.v1 == TEMPLATE_DOMAIN)
            )
            await conn.execute(
                insert(CasbinRule),
                [
                    {"ptype": "p", "v0": r[1], "v1": r[2], "v2": r[3], "v3": r[4]}
                    for r in sorted(wanted)
                ],
            )
            return True


# -- writes: the caller's transaction holds lock_policy() for the tenant -----------------


async def lock_policy(conn: AsyncConnection, tenant_id: UUID) -> int:
    """Serialise policy changes of one tenant (row lock on its version); returns the
    current version."""
    await conn.execute(
        pg_insert(PolicyVersion)
        .values(tenant_id=tenant_id, version=0)
        .on_conflict_do_nothing(index_elements=[PolicyVersion.tenant_id])
    )
    version = await conn.scalar(
        select(PolicyVersion.version).where(PolicyVersion.tenant_id == tenant_id).with_for_update()
    )
    return int(version or 0)


async def bump_version(conn: AsyncConnection, tenant_id: UUID) -> int:
    version = await conn.scalar(
        update(PolicyVersion)
        .where(PolicyVersion.tenant_id == tenant_id)
        .values(version=PolicyVersion.version + 1, updated_at=func.now())
        .returning(PolicyVersion.version)
    )
    assert version is not None, "lock_policy() creates the row first"
    return int(version)


async def set_permissions(
    conn: AsyncConnection, tenant_id: UUID, role: str, permissions: Iterable[Permission]
) -> None:
    dom = str(tenant_id)
    await conn.execute(
        delete(CasbinRule).where(
            CasbinRule.ptype == "p", CasbinRule.v1 == dom, CasbinRule.v0 == role
        )
    )
    rows = [
        {"ptype": "p", "v0": role, "v1": dom, "v2": obj, "v3": act}
        for obj, act in sorted(set(permissions))
    ]
    if rows:
        await conn.execute(insert(CasbinRule), rows)


async def set_parent(conn: AsyncConnection, tenant_id: UUID, role: str, parent: str | None) -> None:
    dom = str(tenant_id)
    await conn.execute(
        delete(CasbinRule).where(
            CasbinRule.ptype == "g", CasbinRule.v2 == dom, CasbinRule.v0 == role
        )
    )
    if parent is not None:
        await conn.execute(insert(CasbinRule).values(ptype="g", v0=role, v1=parent, v2=dom))


async def find_role(
    conn: AsyncConnection, tenant_id: UUID, name: str
) -> tuple[str, str | None, str | None] | None:
    """(kind, description, creation_key) of a tenant's role row, or None."""
    row = (
        await conn.execute(
            select(TenantRole.kind, TenantRole.description, TenantRole.creation_key).where(
                TenantRole.tenant_id == tenant_id, TenantRole.name == name
            )
        )
    ).one_or_none()
    return None if row is None else (row.kind, row.description, row.creation_key)


async def find_role_by_key(conn: AsyncConnection, tenant_id: UUID, key: str) -> str | None:
    name = await conn.scalar(
        select(TenantRole.name).where(
            TenantRole.tenant_id == tenant_id, TenantRole.creation_key == key
        )
    )
    return None if name is None else str(name)


async def descriptions(conn: AsyncConnection, tenant_id: UUID) -> dict[str, str | None]:
    rows = await conn.execute(
        select(TenantRole.name, TenantRole.description).where(TenantRole.tenant_id == tenant_id)
    )
    return {r.name: r.description for r in rows}


async def put_role(
    conn: AsyncConnection,
    tenant_id: UUID,
    name: str,
    kind: str,
    *,
    description: str | None = None,
    creation_key: str | None = None,
) -> None:
    stmt = pg_insert(TenantRole).values(
        tenant_id=tenant_id,
        name=name,
        kind=kind,
        description=description,
        creation_key=creation_key,
    )
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[TenantRole.tenant_id, TenantRole.name],
            set_={"updated_at": func.now()},
        )
    )


async def describe_role(
    conn: AsyncConnection, tenant_id: UUID, name: str, description: str | None
) -> None:
    await conn.execute(
        update(TenantRole)
        .where(TenantRole.tenant_id == tenant_id, TenantRole.name == name)
        .values(description=description, updated_at=func.now())
    )


async def drop_role(conn: AsyncConnection, tenant_id: UUID, name: str) -> None:
    """Remove a tenant's role row and every rule naming it as the subject."""
    dom = str(tenant_id)
    await conn.execute(
        delete(CasbinRule).where(
            CasbinRule.v0 == name,
            or_(
                and_(CasbinRule.ptype == "p", CasbinRule.v1 == dom),
                and_(CasbinRule.ptype == "g", CasbinRule.v2 == dom),
            ),
        )
    )
    await conn.execute(
        delete(TenantRole).where(TenantRole.tenant_id == tenant_id, TenantRole.name == name)
    )
