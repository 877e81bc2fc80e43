"""Platform administration: onboarding, suspension, clients, topology.

Onboarding spans two databases (control plane, then the tenant's shard), so it is a
small resumable sequence rather than one transaction: the tenant is written as
``provisioning`` first, the shard is prepared (residency row, default pipeline; both
idempotent), then the tenant turns ``active`` and gets its first client. A retry of
the same request (same slug and Idempotency-Key) resumes wherever the last one stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import RowMapping, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cache.core import TwoLevelCache
from meridian.admin.schemas import ClientCreate, TenantCreate
from meridian.crud import control
from meridian.crud.idempotency import request_fingerprint, validate_key
from meridian.directory import CachedDirectory
from meridian.errors import (
    NOT_FOUND,
    Conflict,
    DedicatedShardOccupied,
    IdempotencyKeyReused,
    NotFound,
    invalid_field,
)
from meridian.ids import new_id
from meridian.oauth.clients import create_client
from meridian.oauth.models import OAuthClient
from meridian.oauth.notbefore import NotBeforeStore
from meridian.pipelines.defaults import seed_default_pipeline
from meridian.principal import TENANT_SCOPES
from sharding import citus
from sharding.driver import MoveDriver
from sharding.engine import ShardEngine, asyncpg_dsn
from sharding.engines import ShardEngines, ShardInfo
from sharding.models import Shard
from sharding.placement import PlacementError, choose_shard, dedicated_taken, lock_placement
from sharding.router import ShardRouter
from tenancy.context import TenantStatus
from tenancy.keyring import TenantKeyring
from tenancy.models import DirectoryEntry, Tenant


@dataclass(frozen=True, slots=True)
class AdminDeps:
    """What platform administration uses (built from the runtime by
    ``meridian.admin.wiring.admin_deps``): the control plane, through the kit's
    ``meridian.crud.control`` flows; the topology; the tenant's shard, directory entry,
    data keys, not-before time and cached lists."""

    control: AsyncEngine
    engines: ShardEngines
    router: ShardRouter
    directory: CachedDirectory
    keyring: TenantKeyring
    revocations: NotBeforeStore
    cache: TwoLevelCache
    list_kinds: tuple[str, ...]  # the kinds whose list pages are cached
    reload_topology: Callable[[], Awaitable[list[ShardInfo]]]
    tenant_counts: Callable[[], Awaitable[dict[str, int]]]
    moves: MoveDriver


def _tenant_columns() -> list[Any]:
    return [
        Tenant.id,
        Tenant.slug,
        Tenant.name,
        Tenant.region,
        DirectoryEntry.shard_id,
        DirectoryEntry.epoch,
        Tenant.status,
        Tenant.plan,
        Tenant.event_retention_days,
        Tenant.limits,
        Tenant.created_at,
    ]


async def _tenant_row(conn: AsyncConnection, tenant_id: UUID) -> dict[str, Any] | None:
    row = (
        (
            await conn.execute(
                select(*_tenant_columns())
                .join(DirectoryEntry, DirectoryEntry.tenant_id == Tenant.id)
                .where(Tenant.id == tenant_id)
            )
        )
        .mappings()
        .one_or_none()
    )
    return dict(row) if row is not None else None


def _fingerprint(body: TenantCreate) -> bytes:
    return request_fingerprint("POST", "/admin/v1/tenants", body.model_dump(mode="json"))


def _resumed(found: Any, body: TenantCreate, key: str | None, fingerprint: bytes) -> UUID:
    """The tenant a retried onboarding resumes (``found``: the row with ``body``'s slug):
    409 if another onboarding made it, 422 if this key was used for another request."""
    if key is None or found.creation_key != key:
        raise Conflict(f"A tenant with slug {body.slug!r} exists.")
    if found.creation_fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used for a different request; use a new key."
        )
    tenant_id: UUID = found.id
    return tenant_id


class TenantAdminService:
    async def onboard(
        self, deps: AdminDeps, body: TenantCreate, idempotency_key: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Returns (tenant with first client, created_now)."""
        key = validate_key(idempotency_key) if idempotency_key else None
        fingerprint = _fingerprint(body)

        async def place(conn: AsyncConnection) -> tuple[UUID, bool]:
            existing = (
                await conn.execute(
                    select(
                        Tenant.id, Tenant.status, Tenant.creation_key, Tenant.creation_fingerprint
                    ).where(Tenant.slug == body.slug)
                )
            ).one_or_none()
            if existing is not None:
                return _resumed(existing, body, key, fingerprint), True
            return await self._place(deps, conn, body, key, fingerprint), False

        tenant_id, resumed = await control.transact(deps.control, place)
        row = await self._finish(deps, tenant_id, body.name)
        row["placement"] = self._placement(deps, body, row["shard_id"])
        return row, not resumed

    async def onboard_many(
        self,
        deps: AdminDeps,
        requests: Sequence[tuple[TenantCreate, str | None]],
        *,
        concurrency: int = 8,
    ) -> list[tuple[dict[str, Any], bool]]:
        """:meth:`onboard` for many tenants at once (the load-test seeder): the same
        steps, checks and answers for each, but every tenant placed by region is placed
        in ONE control transaction under ONE placement lock (placement serialises
        onboardings: one at a time, it bounds how fast tenants can be created), then
        finished ``concurrency`` at a time. Requests naming a shard go one by one."""
        results: dict[int, tuple[dict[str, Any], bool]] = {}
        pending: list[tuple[int, UUID, TenantCreate, bool]] = []
        by_region = [
            (i, body, key) for i, (body, key) in enumerate(requests) if body.shard_id is None
        ]
        if by_region:

            async def place_all(conn: AsyncConnection) -> None:
                existing = {
                    r.slug: r
                    for r in await conn.execute(
                        select(
                            Tenant.id, Tenant.slug, Tenant.creation_key, Tenant.creation_fingerprint
                        ).where(Tenant.slug.in_([body.slug for _, body, _ in by_region]))
                    )
                }
                await lock_placement(conn)
                shards = await deps.reload_topology()
                counts = dict(await deps.tenant_counts())
                tenants: list[dict[str, Any]] = []
                for i, body, raw_key in by_region:
                    key = validate_key(raw_key) if raw_key else None
                    fingerprint = _fingerprint(body)
                    found = existing.get(body.slug)
                    if found is not None:
                        pending.append((i, _resumed(found, body, key, fingerprint), body, False))
                        continue
                    assert body.region is not None
                    if not any(s.region == body.region for s in shards):
                        raise invalid_field(
                            "region", f"no shard in region {body.region!r}", NOT_FOUND
                        )
                    try:
                        shard = choose_shard(shards, counts, body.region)
                    except PlacementError as exc:
                        raise Conflict(f"region: {exc}.") from exc
                    counts[shard.id] = counts.get(shard.id, 0) + 1
                    tenant_id = new_id()
                    tenants.append(
                        {
                            "id": tenant_id,
                            "slug": body.slug,
                            "name": body.name,
                            "region": shard.region,
                            "status": TenantStatus.PROVISIONING.value,
                            "plan": body.plan,
                            "creation_key": key,
                            "creation_fingerprint": fingerprint,
                            "shard_id": shard.id,
                        }
                    )
                    pending.append((i, tenant_id, body, True))
                if tenants:
                    await conn.execute(
                        insert(Tenant),
                        [{k: v for k, v in t.items() if k != "shard_id"} for t in tenants],
                    )
                    await conn.execute(
                        insert(DirectoryEntry),
                        [
                            {"tenant_id": t["id"], "shard_id": t["shard_id"], "epoch": 1}
                            for t in tenants
                        ],
                    )

            await control.transact(deps.control, place_all)
        gate = asyncio.Semaphore(concurrency)

        async def finish(i: int, tenant_id: UUID, body: TenantCreate, created: bool) -> None:
            async with gate:
                row = await self._finish(deps, tenant_id, body.name)
            row["placement"] = self._placement(deps, body, row["shard_id"])
            results[i] = (row, created)

        await asyncio.gather(*(finish(*p) for p in pending))
        for i, (body, key) in enumerate(requests):
            if body.shard_id is not None:
                results[i] = await self.onboard(deps, body, key)
        return [results[i] for i in range(len(requests))]

    def _placement(self, deps: AdminDeps, body: TenantCreate, shard_id: str) -> str:
        """How the tenant was placed: by region, or onto the shard named (dedicated or
        shared). Derived from the request, so a replay answers the same."""
        if body.shard_id is None:
            return "region"
        info = deps.engines.shards.get(shard_id)
        return "dedicated" if info is not None and info.dedicated else "shard"

    async def _place(
        self,
        deps: AdminDeps,
        conn: AsyncConnection,
        body: TenantCreate,
        key: str | None,
        fingerprint: bytes,
    ) -> UUID:
        await lock_placement(conn)
        shards = await deps.reload_topology()
        if body.shard_id is not None:
            shard = next((s for s in shards if s.id == body.shard_id), None)
            if shard is None:
                raise invalid_field("shard_id", f"no shard {body.shard_id!r}", NOT_FOUND)
            if shard.state == "offline":
                raise Conflict(f"shard_id: shard {shard.id!r} is offline.")
            if body.region is not None and body.region != shard.region:
                raise Conflict(
                    f"region: shard {shard.id!r} is in region {shard.region!r}, "
                    f"not {body.region!r}."
                )
            if await dedicated_taken(conn, shard):
                # Decided under the placement lock: two onboardings cannot both take it.
                raise DedicatedShardOccupied(
                    f"Shard {shard.id!r} is dedicated and already holds a tenant; "
                    "name another shard, or a region."
                )
        else:
            assert body.region is not None
            if not any(s.region == body.region for s in shards):
                raise invalid_field("region", f"no shard in region {body.region!r}", NOT_FOUND)
            try:
                shard = choose_shard(shards, await deps.tenant_counts(), body.region)
            except PlacementError as exc:
                # The region exists but every shared shard of it is full, closed or offline.
                raise Conflict(f"region: {exc}.") from exc
        tenant_id = new_id()
        await conn.execute(
            insert(Tenant).values(
                id=tenant_id,
                slug=body.slug,
                name=body.name,
                region=shard.region,
                status=TenantStatus.PROVISIONING.value,
                plan=body.plan,
                creation_key=key,
                creation_fingerprint=fingerprint,
            )
        )
        await conn.execute(
            insert(DirectoryEntry).values(tenant_id=tenant_id, shard_id=shard.id, epoch=1)
        )
        return tenant_id

    async def _finish(self, deps: AdminDeps, tenant_id: UUID, name: str) -> dict[str, Any]:
        ctx = await deps.directory.load(tenant_id)
        assert ctx is not None
        if ctx.status is TenantStatus.PROVISIONING:
            if ctx.shard_id not in deps.engines.shards:
                await deps.reload_topology()
            # Admission commits on its own before anything else runs in the tenant: the
            # owner-run admission writes the residency row, and on Citus the app role
            # may not then touch the colocated shards in the same transaction ("cannot
            # perform query on placements that were modified in this transaction by a
            # different user"). Both steps are idempotent, so a retry resumes either.
            async with deps.router.transaction(ctx, write=True, admit=True):
                pass
            async with deps.router.transaction(ctx, write=True) as session:
                await seed_default_pipeline(session, ctx)

        async def activate(
            conn: AsyncConnection,
        ) -> tuple[dict[str, Any] | None, str, str, str | None]:
            client_secret: str | None = None
            client = (
                await conn.execute(
                    select(OAuthClient.client_id, OAuthClient.scope)
                    .where(OAuthClient.tenant_id == tenant_id)
                    .order_by(OAuthClient.created_at)
                    .limit(1)
                )
            ).one_or_none()
            if client is None:
                new = await create_client(
                    conn,
                    name=f"{name} (first client)",
                    scope=" ".join(TENANT_SCOPES),
                    tenant_id=tenant_id,
                    role="admin",  # the tenant's first client administers it
                )
                client_id, scope, client_secret = new.client_id, new.scope, new.client_secret
            else:
                client_id, scope = client.client_id, client.scope
            # The first data key exists before the tenant can write anything (idempotent).
            await deps.keyring.ensure_key(conn, tenant_id)
            await conn.execute(
                update(Tenant)
                .where(Tenant.id == tenant_id, Tenant.status == TenantStatus.PROVISIONING.value)
                .values(status=TenantStatus.ACTIVE.value, updated_at=func.now())
            )
            return await _tenant_row(conn, tenant_id), client_id, scope, client_secret

        row, client_id, scope, client_secret = await control.transact(deps.control, activate)
        await deps.directory.invalidate(tenant_id)
        assert row is not None
        row["client"] = {"client_id": client_id, "client_secret": client_secret, "scope": scope}
        return row

    async def get(self, deps: AdminDeps, tenant_id: UUID) -> dict[str, Any]:
        row = await control.read(deps.control, lambda conn: _tenant_row(conn, tenant_id))
        if row is None:
            raise NotFound(f"No tenant with id {tenant_id}.")
        return row

    async def list_tenants(
        self,
        deps: AdminDeps,
        *,
        status: str | None,
        region: str | None,
        shard_id: str | None,
        after: UUID | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        stmt = select(*_tenant_columns()).join(
            DirectoryEntry, DirectoryEntry.tenant_id == Tenant.id
        )
        if status:
            stmt = stmt.where(Tenant.status == status)
        if region:
            stmt = stmt.where(Tenant.region == region)
        if shard_id:
            stmt = stmt.where(DirectoryEntry.shard_id == shard_id)
        if after:
            stmt = stmt.where(Tenant.id > after)
        stmt = stmt.order_by(Tenant.id).limit(limit + 1)

        async def page(conn: AsyncConnection) -> list[dict[str, Any]]:
            return [dict(r) for r in (await conn.execute(stmt)).mappings()]

        return await control.read(deps.control, page)

    async def set_status(
        self, deps: AdminDeps, tenant_id: UUID, *, to: TenantStatus, allowed_from: set[TenantStatus]
    ) -> dict[str, Any]:

        async def change(conn: AsyncConnection) -> dict[str, Any] | None:
            current = await conn.scalar(
                select(Tenant.status).where(Tenant.id == tenant_id).with_for_update()
            )
            if current is None:
                raise NotFound(f"No tenant with id {tenant_id}.")
            if current != to.value:
                if TenantStatus(current) not in allowed_from:
                    raise Conflict(f"A {current} tenant cannot become {to.value}.")
                await conn.execute(
                    update(Tenant)
                    .where(Tenant.id == tenant_id)
                    .values(status=to.value, updated_at=func.now())
                )
            return await _tenant_row(conn, tenant_id)

        row = await control.transact(deps.control, change)
        await deps.directory.invalidate(tenant_id)
        assert row is not None
        return row

    async def configure(
        self, deps: AdminDeps, tenant_id: UUID, changes: dict[str, Any]
    ) -> dict[str, Any]:
        """Settings of a tenant a platform admin chooses (its event retention, its plan
        and rate limits); every instance's directory entry is dropped, so its rate
        limits apply at once."""

        async def change(conn: AsyncConnection) -> dict[str, Any] | None:
            found = await conn.scalar(
                select(Tenant.id).where(Tenant.id == tenant_id).with_for_update()
            )
            if found is None:
                raise NotFound(f"No tenant with id {tenant_id}.")
            if changes:
                await conn.execute(
                    update(Tenant)
                    .where(Tenant.id == tenant_id)
                    .values(**changes, updated_at=func.now())
                )
            return await _tenant_row(conn, tenant_id)

        row = await control.transact(deps.control, change)
        assert row is not None
        await deps.directory.invalidate(tenant_id)
        return row

    async def delete(self, deps: AdminDeps, tenant_id: UUID) -> dict[str, Any]:
        """Crypto-shredding: the tenant's data keys are destroyed first (committed on
        their own), then the tenant is marked deleted. Its rows stay on the shard but
        nobody can decrypt them again; its tokens stop working (a deleted tenant is
        "gone" to every endpoint). Re-running it finishes an interrupted deletion."""

        async def shred(conn: AsyncConnection) -> None:
            current = await conn.scalar(
                select(Tenant.status).where(Tenant.id == tenant_id).with_for_update()
            )
            if current is None:
                raise NotFound(f"No tenant with id {tenant_id}.")
            await deps.keyring.destroy_all(conn, tenant_id)

        async def mark_deleted(conn: AsyncConnection) -> dict[str, Any] | None:
            await conn.execute(
                update(Tenant)
                .where(Tenant.id == tenant_id)
                .values(status=TenantStatus.DELETED.value, updated_at=func.now())
            )
            return await _tenant_row(conn, tenant_id)

        await control.transact(deps.control, shred)
        row = await control.transact(deps.control, mark_deleted)
        deps.keyring.forget(tenant_id)
        # Every instance stops serving the tenant within its directory TTL at the latest.
        await deps.directory.invalidate(tenant_id)
        # Cached pages and records hold ciphertext only, and no request of the tenant
        # reaches them any more; the lists are dropped anyway, records expire by TTL.
        for kind in deps.list_kinds:
            await deps.cache.invalidate(str(tenant_id), f"{kind}-list")
        assert row is not None
        return row

    async def add_client(
        self, deps: AdminDeps, tenant_id: UUID, body: ClientCreate, idempotency_key: str | None
    ) -> tuple[dict[str, Any], bool]:
        key = validate_key(idempotency_key) if idempotency_key else None

        async def add(conn: AsyncConnection) -> tuple[dict[str, Any], bool]:
            status = await conn.scalar(select(Tenant.status).where(Tenant.id == tenant_id))
            if status is None or status == TenantStatus.DELETED.value:
                raise NotFound(f"No tenant with id {tenant_id}.")
            if key is not None:
                found = (
                    await conn.execute(
                        select(OAuthClient.client_id, OAuthClient.scope, OAuthClient.name).where(
                            OAuthClient.tenant_id == tenant_id, OAuthClient.creation_key == key
                        )
                    )
                ).one_or_none()
                if found is not None:
                    if (found.name, found.scope) != (body.name, body.scope):
                        raise IdempotencyKeyReused(
                            "This Idempotency-Key was used for a different request."
                        )
                    return {
                        "client_id": found.client_id,
                        "client_secret": None,
                        "scope": found.scope,
                    }, False
            new = await create_client(conn, name=body.name, scope=body.scope, tenant_id=tenant_id)
            if key is not None:
                await conn.execute(
                    update(OAuthClient)
                    .where(OAuthClient.client_id == new.client_id)
                    .values(creation_key=key)
                )
            return {
                "client_id": new.client_id,
                "client_secret": new.client_secret,
                "scope": new.scope,
            }, True

        return await control.transact(deps.control, add)

    async def revoke_tokens(self, deps: AdminDeps, tenant_id: UUID) -> dict[str, Any]:
        """Emergency revocation: every token of the tenant issued until now is refused
        (access tokens on their next request, refresh tokens at once)."""
        exists = await control.read(
            deps.control, lambda conn: conn.scalar(select(Tenant.id).where(Tenant.id == tenant_id))
        )
        if exists is None:
            raise NotFound(f"No tenant with id {tenant_id}.")
        return asdict(await deps.revocations.revoke(tenant_id, None))

    async def shards(self, deps: AdminDeps) -> list[dict[str, Any]]:
        counts = await deps.tenant_counts()

        async def topology(conn: AsyncConnection) -> Sequence[RowMapping]:
            stmt = select(
                Shard.id, Shard.region, Shard.state, Shard.capacity, Shard.dedicated, Shard.engine
            ).order_by(Shard.id)
            return (await conn.execute(stmt)).mappings().all()

        rows = await control.read(deps.control, topology)
        return [{**r, "tenant_count": counts.get(r["id"], 0)} for r in rows]

    async def isolate(
        self,
        deps: AdminDeps,
        tenant_id: UUID,
        *,
        node: str | None,
        admin_dsn: str | None = None,
        mode: citus.TransferMode = citus.TransferMode.ONLINE,
    ) -> dict[str, Any]:
        """Gives the tenant a shard group of its own inside its Citus shard, and moves
        that group to ``node`` (``host:port``) when given; both steps are skipped when
        already done. Runs on the coordinator as ``admin_dsn`` (default: the shard's
        recorded admin DSN), whose role must see every row (``sharding.citus``).

        Synchronous: it returns once Citus has finished, seconds for a small tenant,
        longer in proportion to the tenant's group for a large one; the tenant's
        requests keep being served meanwhile (online mode)."""
        ctx = await deps.directory.load(tenant_id)
        if ctx is None or ctx.status is TenantStatus.DELETED:
            raise NotFound(f"No tenant with id {tenant_id}.")

        async def recorded(conn: AsyncConnection) -> Any:
            return (
                await conn.execute(
                    select(Shard.admin_dsn, Shard.engine).where(Shard.id == ctx.shard_id)
                )
            ).one_or_none()

        shard = await control.read(deps.control, recorded)
        if shard is None:
            raise Conflict(f"The tenant's shard {ctx.shard_id!r} is not in the topology.")
        if shard.engine != ShardEngine.CITUS.value:
            raise Conflict(
                f"Shard {ctx.shard_id!r} runs {shard.engine}: a tenant gets a shard group "
                "of its own on a Citus shard only (`meridian shards distribute` converts a "
                "shard whose database runs on a Citus coordinator)."
            )
        conn = await asyncpg.connect(asyncpg_dsn(admin_dsn or shard.admin_dsn), timeout=10.0)
        try:
            done = await citus.isolate_tenant(conn, tenant_id, to_node=node, mode=mode)
        except citus.UnknownNodeError as exc:
            raise invalid_field("node", str(exc), NOT_FOUND) from exc
        except citus.CitusAdminError as exc:
            raise Conflict(f"Shard {ctx.shard_id!r}: {exc}.") from exc
        finally:
            await conn.close()
        return {"tenant_id": tenant_id, "shard_id": ctx.shard_id, **done.as_dict()}


tenant_admin = TenantAdminService()
