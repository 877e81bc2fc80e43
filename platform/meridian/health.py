"""Liveness (``/healthz``), readiness (``/readyz``: control plane, shards, Redis) and
Prometheus metrics (``/metrics``)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from pydantic import BaseModel
from sqlalchemy import func, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response

from meridian.deps import RuntimeDep
from meridian.runtime import Runtime
from meridian.web.responses import json_response
from sharding.errors import ShardUnavailableError
from sharding.models import FINAL_MOVE_STATES, TenantMove

router = APIRouter(tags=["health"])
_TIMEOUT = 2.0


class Liveness(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "unavailable"]
    # "control", "shard:<id>", "redis": "ok" or "down: <reason>".
    checks: dict[str, str]


async def _ping_engine(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(select(literal(1)))


async def _check(name: str, probe: Any) -> tuple[str, str]:
    try:
        async with asyncio.timeout(_TIMEOUT):
            await probe
    except Exception as exc:  # any failure means "not ready"; the name says where
        return name, f"down: {type(exc).__name__}"
    return name, "ok"


@router.get("/healthz", response_model=Liveness)
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "The control plane is unreachable."}},
)
async def readyz(rt: RuntimeDep) -> Response:
    results = await probe(rt)
    # Only the control plane gates readiness: without it this instance can serve no
    # tenant. A shard or Redis being down is reported but keeps the instance in
    # service, since it still serves every other tenant (and Redis is optional).
    if results["control"] != "ok":
        status, code = "unavailable", 503
    elif all(v == "ok" for v in results.values()):
        status, code = "ready", 200
    else:
        status, code = "degraded", 200
    return json_response({"status": status, "checks": results}, code)


async def probe(rt: Runtime) -> dict[str, str]:
    """ "control", "shard:<id>" and "redis" (when configured): "ok" or "down: <reason>",
    each asked at once and given at most two seconds."""
    probes = [_check("control", _ping_engine(rt.control))]
    for shard_id in rt.engines.shards:
        wait = rt.engines.unavailable_for(shard_id)
        if wait > 0:  # breaker open: report without waiting
            probes.append(_fail(f"shard:{shard_id}", ShardUnavailableError(shard_id, wait)))
            continue
        engine = rt.engines.engine(shard_id, check=False)
        probes.append(_check(f"shard:{shard_id}", _ping_engine(engine)))
    if rt.redis is not None:
        probes.append(_check("redis", rt.redis.ping()))
    return dict(await asyncio.gather(*probes))


async def _fail(name: str, exc: Exception) -> tuple[str, str]:
    return name, f"down: {type(exc).__name__}"


@router.get("/metrics", include_in_schema=False)
async def metrics(rt: RuntimeDep) -> Response:
    return Response(await exposition(rt), media_type=CONTENT_TYPE_LATEST)


async def exposition(rt: Runtime) -> bytes:
    """The Prometheus text of a process (an API instance's ``/metrics``, and the
    worker's): the counts of every process of its kind, and the present states."""
    families = [*rt.metrics.families(), *await live_families(rt)]
    return generate_latest(_Families(families))


async def live_families(rt: Runtime) -> list[Metric]:
    """States read when scraped, so that whichever instance or worker process is asked
    tells the present: what each dependency answers now, and how far behind each
    unfinished tenant move's copy is (from the control plane, whoever drives it)."""
    checks = await probe(rt)
    up = GaugeMetricFamily(
        "meridian_up", "1 when this instance reaches the dependency now, else 0.", labels=["of"]
    )
    shard_up = GaugeMetricFamily(
        "meridian_shard_up", "1 when this instance reaches the shard now, else 0.", labels=["shard"]
    )
    for name, result in checks.items():
        value = 1.0 if result == "ok" else 0.0
        if name.startswith("shard:"):
            shard_up.add_metric([name.removeprefix("shard:")], value)
        else:
            up.add_metric([name], value)
    lag = GaugeMetricFamily(
        "meridian_tenant_move_lag_bytes",
        "How far the target of an unfinished tenant move is behind its source (WAL bytes).",
        labels=["move", "source", "target"],
    )
    if checks["control"] == "ok":
        for labels, behind in await _unfinished_moves(rt.control):
            lag.add_metric(labels, behind)
    return [up, shard_up, lag]


async def _unfinished_moves(control: AsyncEngine) -> list[tuple[list[str], int]]:
    query = select(
        TenantMove.id,
        TenantMove.source_shard_id,
        TenantMove.target_shard_id,
        func.coalesce(TenantMove.lag_bytes, 0).label("lag"),
    ).where(TenantMove.state.not_in([s.value for s in FINAL_MOVE_STATES]))
    async with asyncio.timeout(_TIMEOUT), control.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [([str(r.id), r.source_shard_id, r.target_shard_id], r.lag) for r in rows]


class _Families:
    """What ``generate_latest`` reads: anything with ``collect()``."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families
