"""Platform administration: onboarding, suspension, clients, topology.

Onboarding spans two databases (control plane, then the tenant's shard), so it is a
small resumable sequence rather than one transaction: the tenant is written as
``provisioning`` first, the shard is prepared (residency row, default pipeline; both
idempotent), then the tenant turns ``active`` and gets its first client. A retry of
the same request (same slug and Idempotency-Key) resumes wherever the last one stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any
from uuid import UUID

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from meridian.admin.schemas import ClientCreate, TenantCreate
from meridian.crud.idempotency import request_fingerprint, validate_key
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
from meridian.pipelines.defaults import seed_default_pipeline
from meridian.principal import TENANT_SCOPES
from meridian.runtime import Runtime
from sharding.models import Shard
from sharding.placement import PlacementError, choose_shard
from tenancy.context import TenantStatus
from tenancy.models import DirectoryEntry, Tenant

_PLACEMENT_LOCK = 0x504C4143  # "PLAC": serialises placement decisions


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


class TenantAdminService:
    async def onboard(
        self, rt: Runtime, body: TenantCreate, idempotency_key: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Returns (tenant with first client, created_now)."""
        key = validate_key(idempotency_key) if idempotency_key else None
        fingerprint = request_fingerprint("POST", "/admin/v1/tenants", body.model_dump(mode="json"))
        async with rt.control.begin() as conn:
            existing = (
                await conn.execute(
                    select(
                        Tenant.id, Tenant.status, Tenant.creation_key, Tenant.creation_fingerprint
                    ).where(Tenant.slug == body.slug)
                )
            ).one_or_none()
            if existing is not None:
                if key is None or existing.creation_key != key:
                    raise Conflict(f"A tenant with slug {body.slug!r} exists.")
                if existing.creation_fingerprint != fingerprint:
                    raise IdempotencyKeyReused(
                        "This Idempotency-Key was used for a different request; use a new key."
                    )
                tenant_id = existing.id
                resumed = True
            else:
                tenant_id = await self._place(rt, conn, body, key, fingerprint)
                resumed = False
        row = await self._finish(rt, tenant_id, body.name)
        row["placement"] = self._placement(rt, body, row["shard_id"])
        return row, not resumed

    async def onboard_many(
        self,
        rt: Runtime,
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
            async with rt.control.begin() as conn:
                existing = {
                    r.slug: r
                    for r in await conn.execute(
                        select(
                            Tenant.id, Tenant.slug, Tenant.creation_key, Tenant.creation_fingerprint
                        ).where(Tenant.slug.in_([body.slug for _, body, _ in by_region]))
                    )
                }
                await conn.execute(select(func.pg_advisory_xact_lock(_PLACEMENT_LOCK)))
                shards = await rt.reload_topology()
                counts = dict(await rt.tenant_counts())
                tenants: list[dict[str, Any]] = []
                for i, body, raw_key in by_region:
                    key = validate_key(raw_key) if raw_key else None
                    fingerprint = request_fingerprint(
                        "POST", "/admin/v1/tenants", body.model_dump(mode="json")
                    )
                    found = existing.get(body.slug)
                    if found is not None:
                        if key is None or found.creation_key != key:
                            raise Conflict(f"A tenant with slug {body.slug!r} exists.")
                        if found.creation_fingerprint != fingerprint:
                            raise IdempotencyKeyReused(
                                "This Idempotency-Key was used for a different request; "
                                "use a new key."
                            )
                        pending.append((i, found.id, body, False))
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
        gate = asyncio.Semaphore(concurrency)

        async def finish(i: int, tenant_id: UUID, body: TenantCreate, created: bool) -> None:
            async with gate:
                row = await self._finish(rt, tenant_id, body.name)
            row["placement"] = self._placement(rt, body, row["shard_id"])
            results[i] = (row, created)

        await asyncio.gather(*(finish(*p) for p in pending))
        for i, (body, key) in enumerate(requests):
            if body.shard_id is not None:
                results[i] = await self.onboard(rt, body, key)
        return [results[i] for i in range(len(requests))]

    def _placement(self, rt: Runtime, body: TenantCreate, shard_id: str) -> str:
        """How the tenant was placed: by region, or onto the shard named (dedicated or
        shared). Derived from the request, so a replay answers the same."""
        if body.shard_id is None:
            return "region"
        info = rt.engines.shards.get(shard_id)
        return "dedicated" if info is not None and info.dedicated else "shard"

    async def _place(
        self,
        rt: Runtime,
        conn: AsyncConnection,
        body: TenantCreate,
        key: str | None,
        fingerprint: bytes,
    ) -> UUID:
        await conn.execute(select(func.pg_advisory_xact_lock(_PLACEMENT_LOCK)))
        shards = await rt.reload_topology()
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
            if shard.dedicated and (await rt.tenant_counts()).get(shard.id, 0) > 0:
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
                shard = choose_shard(shards, await rt.tenant_counts(), body.region)
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

    async def _finish(self, rt: Runtime, tenant_id: UUID, name: str) -> dict[str, Any]:
        ctx = await rt.directory.load(tenant_id)
        assert ctx is not None
        if ctx.status is TenantStatus.PROVISIONING:
            if ctx.shard_id not in rt.engines.shards:
                await rt.reload_topology()
            async with rt.router.transaction(ctx, write=True, admit=True) as session:
                await seed_default_pipeline(session, ctx)
        async with rt.control.begin() as conn:
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
            await rt.keyring.ensure_key(conn, tenant_id)
            await conn.execute(
                update(Tenant)
                .where(Tenant.id == tenant_id, Tenant.status == TenantStatus.PROVISIONING.value)
                .values(status=TenantStatus.ACTIVE.value, updated_at=func.now())
            )
            row = await _tenant_row(conn, tenant_id)
        await rt.directory.invalidate(tenant_id)
        assert row is not None
        row["client"] = {"client_id": client_id, "client_secret": client_secret, "scope": scope}
        return row

    async def get(self, rt: Runtime, tenant_id: UUID) -> dict[str, Any]:
        async with rt.control.connect() as conn:
            row = await _tenant_row(conn, tenant_id)
        if row is None:
            raise NotFound(f"No tenant with id {tenant_id}.")
        return row

    async def list_tenants(
        self,
        rt: Runtime,
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
        async with rt.control.connect() as conn:
            return [dict(r) for r in (await conn.execute(stmt)).mappings()]

    async def set_status(
        self, rt: Runtime, tenant_id: UUID, *, to: TenantStatus, allowed_from: set[TenantStatus]
    ) -> dict[str, Any]:
        async with rt.control.begin() as conn:
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
            row = await _tenant_row(conn, tenant_id)
        await rt.directory.invalidate(tenant_id)
        assert row is not None
        return row

    async def delete(self, rt: Runtime, tenant_id: UUID) -> dict[str, Any]:
        """Crypto-shredding: the tenant's data keys are destroyed first (committed on
        their own), then the tenant is marked deleted. Its rows stay on the shard but
        nobody can decrypt them again; its tokens stop working (a deleted tenant is
        "gone" to every endpoint). Re-running it finishes an interrupted deletion."""
        async with rt.control.begin() as conn:
            current = await conn.scalar(
                select(Tenant.status).where(Tenant.id == tenant_id).with_for_update()
            )
            if current is None:
                raise NotFound(f"No tenant with id {tenant_id}.")
            await rt.keyring.destroy_all(conn, tenant_id)
        async with rt.control.begin() as conn:
            await conn.execute(
                update(Tenant)
                .where(Tenant.id == tenant_id)
                .values(status=TenantStatus.DELETED.value, updated_at=func.now())
            )
            row = await _tenant_row(conn, tenant_id)
        rt.keyring.forget(tenant_id)
        # Every instance stops serving the tenant within its directory TTL at the latest.
        await rt.directory.invalidate(tenant_id)
        # Cached pages and records hold ciphertext only, and no request of the tenant
        # reaches them any more; the lists are dropped anyway, records expire by TTL.
        for kind in rt.list_cache:
            await rt.cache.invalidate(str(tenant_id), f"{kind}-list")
        assert row is not None
        return row

    async def add_client(
        self, rt: Runtime, tenant_id: UUID, body: ClientCreate, idempotency_key: str | None
    ) -> tuple[dict[str, Any], bool]:
        key = validate_key(idempotency_key) if idempotency_key else None
        async with rt.control.begin() as conn:
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

    async def revoke_tokens(self, rt: Runtime, tenant_id: UUID) -> dict[str, Any]:
        """Emergency revocation: every token of the tenant issued until now is refused
        (access tokens on their next request, refresh tokens at once)."""
        async with rt.control.connect() as conn:
            exists = await conn.scalar(select(Tenant.id).where(Tenant.id == tenant_id))
        if exists is None:
            raise NotFound(f"No tenant with id {tenant_id}.")
        return asdict(await rt.revocations.revoke(tenant_id, None))

    async def shards(self, rt: Runtime) -> list[dict[str, Any]]:
        counts = await rt.tenant_counts()
        async with rt.control.connect() as conn:
            rows = (
                (
                    await conn.execute(
                        select(
                            Shard.id, Shard.region, Shard.state, Shard.capacity, Shard.dedicated
                        ).order_by(Shard.id)
                    )
                )
                .mappings()
                .all()
            )
        return [{**r, "tenant_count": counts.get(r["id"], 0)} for r in rows]


tenant_admin = TenantAdminService()
