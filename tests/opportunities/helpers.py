"""Pipeline helpers of the opportunity tests.

There is no pipeline API yet, so extra pipelines are written through the app's own
shard router: the same role, tenant entry and row-level security as a request.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal

import httpx
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from meridian.ids import new_id
from meridian.pipelines.models import Pipeline, PipelineStage
from meridian.runtime import Runtime
from tests.fixtures.api import Tenant


@asynccontextmanager
async def tenant_session(client: httpx.AsyncClient, tenant: Tenant) -> AsyncIterator[AsyncSession]:
    runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
    ctx = await runtime.directory.resolve(uuid.UUID(tenant.id))
    assert ctx is not None
    async with runtime.router.transaction(ctx, write=True) as session:
        yield session


async def add_pipeline(
    client: httpx.AsyncClient, tenant: Tenant, stages: Sequence[tuple[str, int]]
) -> tuple[str, dict[str, str]]:
    """A non-default pipeline with ``(name, position)`` stages; returns its id and
    the stage ids by name."""
    pipeline_id = new_id()
    by_name = {name: new_id() for name, _ in stages}
    async with tenant_session(client, tenant) as session:
        await session.execute(
            insert(Pipeline).values(
                tenant_id=uuid.UUID(tenant.id), id=pipeline_id, name=f"P {pipeline_id}"
            )
        )
        if stages:
            await session.execute(
                insert(PipelineStage),
                [
                    {
                        "tenant_id": uuid.UUID(tenant.id),
                        "id": by_name[name],
                        "pipeline_id": pipeline_id,
                        "name": name,
                        "position": position,
                        "probability": Decimal(10),
                    }
                    for name, position in stages
                ],
            )
    return str(pipeline_id), {name: str(sid) for name, sid in by_name.items()}


async def default_pipeline(client: httpx.AsyncClient, tenant: Tenant) -> tuple[str, list[str]]:
    """The tenant's default pipeline and its stage ids in position order."""
    async with tenant_session(client, tenant) as session:
        pipeline_id = await session.scalar(
            select(Pipeline.id).where(
                Pipeline.tenant_id == uuid.UUID(tenant.id), Pipeline.is_default.is_(True)
            )
        )
        assert pipeline_id is not None
        stages = await session.scalars(
            select(PipelineStage.id)
            .where(
                PipelineStage.tenant_id == uuid.UUID(tenant.id),
                PipelineStage.pipeline_id == pipeline_id,
            )
            .order_by(PipelineStage.position)
        )
        return str(pipeline_id), [str(s) for s in stages]


async def drop_default(client: httpx.AsyncClient, tenant: Tenant) -> None:
    async with tenant_session(client, tenant) as session:
        await session.execute(
            update(Pipeline)
            .where(Pipeline.tenant_id == uuid.UUID(tenant.id))
            .values(is_default=False)
        )
